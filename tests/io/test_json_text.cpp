// parse_json_text: the JSON of a file is checked in a flat pass (depth, duplicate keys, NUL)
// before a tree is built from it, so hostile nesting cannot exhaust the stack.
#include <gtest/gtest.h>

#include <string>

#include "attnlens/io/json_text.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(JsonText, ParsesWhatNestsWithinTheLimit) {
  const auto json = io::parse_json_text(R"({"a": {"b": [1, 2]}, "c": "x"})", {"f.json", 3});
  EXPECT_EQ(json["a"]["b"][1], 2);
  EXPECT_EQ(json["c"], "x");
  // Equal keys in different objects are fine.
  EXPECT_EQ(io::parse_json_text(R"({"a": {"a": 1}, "b": {"a": 2}})", {"f.json", 2})["b"]["a"], 2);
}

TEST(JsonText, RejectsDeepNestingWithoutRecursing) {
  expect_error_naming<IoError>(
      [] {
        io::parse_json_text(R"({"a": {"b": [1]}})", {"f.json", 2});
      },
      "f.json: JSON nests deeper than 2 levels");
  // Deep enough to overflow the stack of a recursive copy or destructor (140k levels crashed
  // the old config reader; 20k did under AddressSanitizer).
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  expect_error_naming<IoError>([&] { io::parse_json_text(deep, {"f.json", 8}); }, "nests deeper");
  const std::string objects = [] {
    std::string text;
    for (int i = 0; i < 200'000; ++i) text += "{\"a\":";
    return text + "1" + std::string(200'000, '}');
  }();
  expect_error_naming<IoError>(
      [&] {
        io::parse_json_text(objects, {"f.json", 8});
      },
      "nests deeper");
}

TEST(JsonText, RejectsDuplicateKeysNulAndBadSyntax) {
  expect_error_naming<IoError>(
      [] {
        io::parse_json_text(R"({"a": 1, "a": 2})", {"f.json", 2});
      },
      "f.json: JSON has duplicate key 'a'");
  expect_error_naming<IoError>(
      [] {
        io::parse_json_text(R"({"x": {"a": 1, "b": 2, "a": 3}})", {"f.json", 2});
      },
      "duplicate key 'a'");
  expect_error_naming<IoError>(
      [] {
        io::parse_json_text(std::string("{}\0", 3), {"f.json", 2});
      },
      "NUL");
  expect_error_naming<IoError>(
      [] {
        io::parse_json_text("{\"a\": ", {"f.json", 2});
      },
      "f.json: not valid JSON");
  expect_error_naming<IoError>([] { io::parse_json_text("", {"f.json", 2}); }, "not valid JSON");
}

}  // namespace
}  // namespace attnlens
