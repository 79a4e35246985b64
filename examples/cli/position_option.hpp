// The command line's --position: every relative encoding of the registry (position/registry.hpp)
// and its aliases (alibi-causal, t5-causal, rope-half), with its settings given as
// --position-option KEY=VALUE or by the shorthand flags --num-buckets, --max-distance and
// --rope-base. Nothing here knows an encoding by name: the registry says what exists.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/registry.hpp"

namespace attnlens::cli {

struct PositionArguments {
  std::string name = "none";
  std::vector<std::string> settings;  // KEY=VALUE
  // Shorthands for a setting: the flag, the setting's key, the value given.
  struct Shorthand {
    const char* flag;
    const char* key;
    std::string value;
    CLI::Option* option = nullptr;
  };
  std::vector<Shorthand> shorthands = {{"--num-buckets", "num_buckets", {}},
                                       {"--max-distance", "max_distance", {}},
                                       {"--rope-base", "base", {}}};
};

namespace detail_position {

// The encoding --position names and the setting its alias presets, if any.
struct Choice {
  const PositionEncoding* encoding = nullptr;
  const char* preset_key = nullptr;
  SettingValue preset;
};

inline std::vector<std::pair<std::string, Choice>> choices() {
  std::vector<std::pair<std::string, Choice>> all;
  for (const PositionEncoding& e : position_encodings()) {
    if (e.kind != PositionKind::relative && e.kind != PositionKind::none) continue;
    all.push_back({e.type.name(), {&e, nullptr, SettingValue()}});
    for (const auto& [alias, preset] : e.aliases)
      all.push_back({alias, {&e, preset.first, preset.second}});
  }
  return all;
}

inline std::string names(const std::vector<std::string>& list) {
  std::string out;
  for (const auto& name : list) out += (out.empty() ? "" : ", ") + name;
  return out;
}

// `text` as a value of the kind `like` holds; throws ArgumentError naming `what`.
inline SettingValue parse_value(const std::string& text, const SettingValue& like,
                                const std::string& what) {
  const auto fail = [&](const char* expected) -> SettingValue {
    throw ArgumentError(detail::concat(what, ": expected ", expected, ", got '", text, "'"));
  };
  if (std::holds_alternative<Index>(like)) {  // base 10, in range: no octal, no saturation
    Index value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size() || text.empty())
      return fail("a decimal integer within 64 bits");
    return value;
  }
  if (std::holds_alternative<double>(like)) {
    double value = 0;
    if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value))
      return fail("a finite number");
    return value;
  }
  if (std::holds_alternative<bool>(like)) {
    if (text != "true" && text != "false") return fail("true or false");
    return text == "true";
  }
  return text;
}

// Sets `key` of `options` from text, or throws naming `what` and the settings there are.
inline void set_from_text(const PositionEncoding& encoding, const std::string& key,
                          const std::string& text, const std::string& what,
                          PositionOptions& options) {
  std::vector<std::string> keys;
  for (const PositionSetting& setting : encoding.settings) {
    keys.push_back(setting.key);
    if (key != setting.key) continue;
    const SettingValue value = parse_value(text, setting.get(options), what);
    setting.set(options, value);  // a choice setting names its values itself
    return;
  }
  throw ArgumentError(detail::concat(what, " does not apply to --position ", encoding.type.name(),
                                     keys.empty() ? " (it has no settings)" : " (its settings: ",
                                     names(keys), keys.empty() ? "" : ")"));
}

}  // namespace detail_position

// Adds --position, --position-option and the shorthand flags to `cmd`.
inline void add_position_options(CLI::App* cmd, PositionArguments& args) {
  std::vector<std::string> names;
  for (const auto& [name, choice] : detail_position::choices()) names.push_back(name);
  cmd->add_option(
         "--position", args.name,
         "Position encoding inside each head, from the registry: " + detail_position::names(names) +
             " (docs/architecture.md); parameters are read from --weights under "
             "--prefix by their state_dict names")
      ->check(CLI::IsMember(names));
  cmd->add_option("--position-option", args.settings,
                  "KEY=VALUE: a setting of the --position encoding, as config.json names it "
                  "(repeatable), e.g. num_buckets=16");
  const PositionOptions defaults;
  for (auto& shorthand : args.shorthands) {
    std::vector<std::string> takers;
    std::string fallback;
    for (const auto& [name, choice] : detail_position::choices())
      for (const PositionSetting& setting : choice.encoding->settings)
        if (std::string(setting.key) == shorthand.key) {
          takers.push_back(name);
          std::visit([&](const auto& v) { fallback = detail::concat(v); }, setting.get(defaults));
        }
    shorthand.option = cmd->add_option(
        shorthand.flag, shorthand.value,
        detail::concat("--position-option ", shorthand.key, "=VALUE for ",
                       detail_position::names(takers), " (default ", fallback, ")"));
  }
}

// The PositionOptions the arguments choose; throws ArgumentError naming the option that does
// not apply or does not parse.
inline PositionOptions position_options(const PositionArguments& args) {
  PositionOptions options;
  for (const auto& [name, choice] : detail_position::choices()) {
    if (name != args.name) continue;
    options.type = choice.encoding->type;
    if (choice.preset_key)
      for (const PositionSetting& setting : choice.encoding->settings)
        if (std::string(setting.key) == choice.preset_key) setting.set(options, choice.preset);
    for (const auto& shorthand : args.shorthands)
      if (shorthand.option->count() > 0)
        detail_position::set_from_text(*choice.encoding, shorthand.key, shorthand.value,
                                       shorthand.flag, options);
    for (const std::string& item : args.settings) {
      const auto equals = item.find('=');
      if (equals == std::string::npos)
        throw ArgumentError("--position-option: expected KEY=VALUE, got '" + item + "'");
      detail_position::set_from_text(*choice.encoding, item.substr(0, equals),
                                     item.substr(equals + 1), "--position-option " + item, options);
    }
  }
  return options;
}

}  // namespace attnlens::cli
