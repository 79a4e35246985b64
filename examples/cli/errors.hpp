// How the attnlens subcommands fail: one line on stderr and exit code 2 for bad input (a
// missing or malformed file, a tensor of the wrong name, shape or dtype, sizes larger than
// memory), 70 for anything else (a bug).
#pragma once

#include <cstdlib>
#include <exception>
#include <iostream>
#include <new>
#include <stdexcept>
#include <string>

#include "attnlens/core/errors.hpp"

namespace attnlens::cli {

inline constexpr int k_exit_bad_input = 2;
inline constexpr int k_exit_internal_error = 70;  // EX_SOFTWARE: a bug, please report it

// Runs a subcommand body; attnlens errors become a one-line message and exit code 2, and so
// does running out of memory (sizes are checked before allocation where they can be, but a
// process limit or other processes can still leave too little). Nothing escapes main.
template <class Body>
void run_reporting_errors(const std::string& command, Body&& body) {
  const auto fail = [&](const std::string& message, int code) {
    std::cerr << "attnlens " << command << ": error: " << message << '\n';
    std::exit(code);
  };
  try {
    body();
  } catch (const std::invalid_argument& e) {  // ShapeError, ArgumentError
    fail(e.what(), k_exit_bad_input);
  } catch (const IoError& e) {
    fail(e.what(), k_exit_bad_input);
  } catch (const std::bad_alloc&) {  // and std::bad_array_new_length
    fail("out of memory while running " + command + " (the inputs ask for more than is free)",
         k_exit_bad_input);
  } catch (const std::length_error& e) {  // a container asked for more than it can hold
    fail(std::string("out of memory while running ") + command + " (" + e.what() + ")",
         k_exit_bad_input);
  } catch (const std::exception& e) {
    fail(std::string("internal error: ") + e.what(), k_exit_internal_error);
  }
}
}  // namespace attnlens::cli
