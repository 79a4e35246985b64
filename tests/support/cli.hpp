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

// Runs `<prefix><the tool> <arguments>` in sh; the prefix can set limits.
inline CliRun run_cli_with_prefix(const std::string& prefix, const std::string& arguments) {
#ifndef ATTNLENS_CLI
  (void)prefix;
  (void)arguments;
  return {-1, "the attnlens command-line tool was not built"};
#else
  const std::string command = prefix + std::string(ATTNLENS_CLI) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
#endif
}

inline CliRun run_cli(const std::string& arguments) { return run_cli_with_prefix("", arguments); }

// Runs the tool as run_cli does within the limits every hostile input must respect: 20 s
// and, unless AddressSanitizer (which reserves terabytes of shadow memory) is in the build,
// 4 GiB of address space. A run that hits a limit is killed and has no exit code of its own.
inline CliRun run_cli_limited(const std::string& arguments) {
#if defined(__SANITIZE_ADDRESS__)
  constexpr bool sanitized = true;
#elif defined(__has_feature)
  constexpr bool sanitized = __has_feature(address_sanitizer);
#else
  constexpr bool sanitized = false;
#endif
  // Sanitized code runs several times slower; the limit still catches a hang.
  const std::string seconds = sanitized ? "120" : "20";
  const std::string memory = sanitized ? "" : "ulimit -v 4194304; ";
  return run_cli_with_prefix(memory + "exec timeout -s KILL " + seconds + " ", arguments);
}

}  // namespace attnlens::testing
