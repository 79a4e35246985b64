// The opt-in compiled mode (README, "Compile time"): a program that links attnlens::compiled
// gets ATTNLENS_COMPILED, and the few functions and instantiations src/compiled.cpp holds are
// then only declared by the headers. src/compiled.cpp itself defines ATTNLENS_COMPILING, so it
// sees the definitions; header-only use sees them as inline definitions, as before.
#pragma once

#if defined(ATTNLENS_COMPILED) && !defined(ATTNLENS_COMPILING)
#define ATTNLENS_HEADER_DEFINITIONS 0
#else
#define ATTNLENS_HEADER_DEFINITIONS 1
#endif

// The linkage of a function src/compiled.cpp defines: inline in the headers, external there.
#if defined(ATTNLENS_COMPILING)
#define ATTNLENS_COMPILED_INLINE
#else
#define ATTNLENS_COMPILED_INLINE inline
#endif
