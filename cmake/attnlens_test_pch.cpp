// Empty: the target that owns the tests' precompiled header (tests/CMakeLists.txt) compiles it.
