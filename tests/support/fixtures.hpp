// Test helpers: load the committed PyTorch fixtures (tests/reference/data); the comparison
// with a tolerance (ATTNLENS_EXPECT_CLOSE) is support/compare.hpp, included here.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "attnlens/core/tensor.hpp"
#include "attnlens/io/safetensors.hpp"
#include "support/compare.hpp"  // ATTNLENS_EXPECT_CLOSE, max_abs_error

namespace attnlens::testing {

inline std::string fixture_path(const std::string& name) {
  return std::string(ATTNLENS_FIXTURE_DIR) + "/" + name;
}

inline io::SafeTensors load_fixture(const std::string& name) {
  return io::SafeTensors::load(fixture_path(name));
}

// The JSON array stored under metadata key "cases" by tests/reference/generate.py.
inline nlohmann::json fixture_cases(const io::SafeTensors& file) {
  return nlohmann::json::parse(file.metadata().at("cases"));
}

// tests/reference/README.md: 1e-5 in float, 1e-10 in double, on O(1) values.
template <class T>
constexpr double default_tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-10;
}

}  // namespace attnlens::testing
