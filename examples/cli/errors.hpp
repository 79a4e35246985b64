// How the attnlens subcommands fail: one line on stderr and exit code 2 for bad input (a
// missing or malformed file, a tensor of the wrong name, shape or dtype).
#pragma once

#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include "attnlens/core/errors.hpp"

namespace attnlens::cli {

inline constexpr int k_exit_bad_input = 2;

// Runs a subcommand body; attnlens errors become a one-line message and exit code 2.
template <class Body>
void run_reporting_errors(const std::string& command, Body&& body) {
  try {
    body();
  } catch (const std::invalid_argument& e) {  // ShapeError, ArgumentError
    std::cerr << "attnlens " << command << ": error: " << e.what() << '\n';
    std::exit(k_exit_bad_input);
  } catch (const IoError& e) {
    std::cerr << "attnlens " << command << ": error: " << e.what() << '\n';
    std::exit(k_exit_bad_input);
  }
}

}  // namespace attnlens::cli
