// Parsing JSON from files (a safetensors header, a model's config.json) with the checks a
// hostile file needs (docs/limits.md): nesting no deeper than the format uses, no duplicate
// keys (which readers resolve differently), no NUL byte, and work linear in the text's length.
// A SAX pass checks the text; only text that passed is parsed into a nlohmann::json, so the
// tree that is built, copied and destroyed (recursively) is never deeper than the limit.
#pragma once

#include <cstddef>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <vector>

#include "attnlens/core/errors.hpp"

namespace attnlens::io {

struct JsonTextOptions {
  std::string what;    // names the text in errors: "config.json", "safetensors: header"
  int max_levels = 8;  // objects and arrays nested in each other, the outermost counting 1
};

namespace detail {

// The SAX handler of the checking pass: it keeps one set of keys per open object and builds
// nothing else.
class JsonTextChecker : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit JsonTextChecker(const JsonTextOptions& options) : options_(options) {}

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }

  bool start_object(std::size_t) override {
    open();
    return true;
  }
  bool key(string_t& key) override {
    if (!open_.back().insert(key).second)
      throw IoError(
          attnlens::detail::concat(options_.what, ": JSON has duplicate key '", key, "'"));
    return true;
  }
  bool end_object() override {
    open_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    open();
    return true;
  }
  bool end_array() override {
    open_.pop_back();
    return true;
  }

  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& error) override {
    throw IoError(attnlens::detail::concat(options_.what, ": not valid JSON: ", error.what()));
  }

 private:
  void open() {
    if (static_cast<int>(open_.size()) >= options_.max_levels)
      throw IoError(attnlens::detail::concat(options_.what, ": JSON nests deeper than ",
                                             options_.max_levels, " levels"));
    open_.emplace_back();
  }

  const JsonTextOptions& options_;
  std::vector<std::unordered_set<std::string>> open_;  // per open level: an object's keys so far
};

}  // namespace detail

// Parses [first, last) as one JSON value; every failure is an IoError that starts with
// options.what.
inline nlohmann::json parse_json_text(const char* first, const char* last,
                                      const JsonTextOptions& options) {
  // A raw NUL never occurs in JSON; some parsers stop at it as at the end of the input.
  if (std::memchr(first, '\0', static_cast<std::size_t>(last - first)) != nullptr)
    throw IoError(options.what + ": not valid JSON: it contains a NUL byte");
  detail::JsonTextChecker checker(options);
  nlohmann::json::sax_parse(first, last, &checker);
  try {
    return nlohmann::json::parse(first, last);
  } catch (const nlohmann::json::exception& e) {  // not expected after the checking pass
    throw IoError(attnlens::detail::concat(options.what, ": not valid JSON: ", e.what()));
  }
}

inline nlohmann::json parse_json_text(const std::string& text, const JsonTextOptions& options) {
  return parse_json_text(text.data(), text.data() + text.size(), options);
}

}  // namespace attnlens::io
