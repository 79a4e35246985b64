// Names of enumerated options: one table per enum, {value, name} pairs, and the lookups both
// ways that config.json, the command line and error messages use.
#pragma once

#include <cstddef>
#include <string>

#include "attnlens/core/errors.hpp"

namespace attnlens {

template <class Enum>
struct Named {
  Enum value;
  const char* name;
};

namespace detail {

// "a", "b", "c": the table's names, quoted, for messages.
template <class Enum, std::size_t N>
std::string quoted_names(const Named<Enum> (&table)[N]) {
  std::string names;
  for (const auto& entry : table) names += concat(names.empty() ? "\"" : ", \"", entry.name, "\"");
  return names;
}

}  // namespace detail

template <class Enum, std::size_t N>
const char* name_of(const Named<Enum> (&table)[N], Enum value) {
  for (const auto& entry : table)
    if (entry.value == value) return entry.name;
  return "?";
}

// The value named `name`; throws ArgumentError naming `what` and listing the names otherwise.
template <class Enum, std::size_t N>
Enum value_named(const Named<Enum> (&table)[N], const std::string& name, const std::string& what) {
  for (const auto& entry : table)
    if (name == entry.name) return entry.value;
  throw ArgumentError(detail::concat(what, ": expected one of ", detail::quoted_names(table),
                                     "; got '", name, "'"));
}

}  // namespace attnlens
