// Runs the attnlens command-line tool as a user does (ATTNLENS_CLI is its path when the
// examples are built) and captures its exit code and its stdout and stderr together.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace attnlens::testing {

struct CliRun {
  int exit_code;
  std::string output;  // stdout and stderr
};

inline CliRun run_cli(const std::string& arguments) {
#ifndef ATTNLENS_CLI
  (void)arguments;
  return {-1, "the attnlens command-line tool was not built"};
#else
  const std::string command = std::string(ATTNLENS_CLI) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
#endif
}

}  // namespace attnlens::testing
