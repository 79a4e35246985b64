// Checks the attnlens subcommands share on their options and resources: numbers that must be
// finite (CLI11's PositiveNumber lets NaN through and prints its bound with 309 digits), options
// that the chosen mode does not read, the input tensors a command knows, and a memory estimate
// held against what the process may use before anything is allocated (docs/limits.md).
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/io/safetensors.hpp"

namespace attnlens::cli {

namespace detail_checks {

// A CLI11 validator for a finite number with `holds(value)`, described as `expected`.
template <class Holds>
CLI::Validator finite_number(const std::string& expected, Holds holds) {
  return CLI::Validator(
      [expected, holds](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value) || !holds(value))
          return "expected " + expected + ", got " + text;
        return {};
      },
      "", "");
}

}  // namespace detail_checks

inline const CLI::Validator k_positive_number =
    detail_checks::finite_number("a finite number > 0", [](double v) { return v > 0; });
inline const CLI::Validator k_non_negative_number =
    detail_checks::finite_number("a finite number >= 0", [](double v) { return v >= 0; });

// The names of an enum's table (core/names.hpp), for CLI::IsMember.
template <class Enum, std::size_t N>
std::vector<std::string> names_of(const Named<Enum> (&table)[N]) {
  std::vector<std::string> names;
  for (const auto& entry : table) names.push_back(entry.name);
  return names;
}

// Throws IoError naming the first tensor of `file` (read from `path`) under `prefix` that is
// not in `known`, with the names the command reads: a misspelt optional tensor must not be
// ignored. Names outside the prefix belong to other modules of a larger state_dict.
inline void require_known_tensors(const io::SafeTensors& file, const std::string& path,
                                  const std::vector<std::string>& known,
                                  const std::string& prefix = "") {
  const std::set<std::string> names(known.begin(), known.end());
  for (const auto& name : file.names()) {
    if (names.count(name) || name.compare(0, prefix.size(), prefix) != 0) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    throw IoError("unexpected tensor '" + name + "' in '" + path + "': expected " + list);
  }
}

// The bytes this process may allocate: the physical memory, or less under `ulimit -v`.
inline double usable_memory_bytes() {
  double bytes =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    bytes = std::min(bytes, static_cast<double>(limit.rlim_cur));
  return bytes;
}

// Throws ArgumentError when `bytes` (an estimate in double, which does not overflow) exceeds
// the usable memory; `what` names the sizes it comes from.
inline void require_memory(double bytes, const std::string& what) {
  const double usable = usable_memory_bytes();
  if (bytes > usable) {
    const double gib = 1024.0 * 1024.0 * 1024.0;
    throw ArgumentError(attnlens::detail::concat(what, ": needs about ", bytes / gib,
                                                 " GiB, more than the ", usable / gib,
                                                 " GiB this process may use"));
  }
}

}  // namespace attnlens::cli
