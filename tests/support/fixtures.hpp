// Test helpers: load the committed PyTorch fixtures (tests/reference/data) and compare
// tensors with a tolerance, reporting the largest error and where it is.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "attnlens/core/tensor.hpp"
#include "attnlens/io/safetensors.hpp"

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

// DESIGN.md section 5: 1e-5 in float, 1e-10 in double, on O(1) values.
template <class T>
constexpr double default_tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-10;
}

// Largest |a - b| over two tensors of the same shape; NaN if either holds a NaN where the
// other does not. Fails the test on a shape mismatch.
template <class T>
double max_abs_error(const Tensor<T>& actual, const Tensor<T>& expected) {
  EXPECT_EQ(actual.shape(), expected.shape());
  if (actual.shape() != expected.shape()) return INFINITY;
  double worst = 0.0;
  for (Index i = 0; i < actual.size(); ++i) {
    const double a = actual.data()[i], e = expected.data()[i];
    if (std::isnan(a) != std::isnan(e)) return NAN;
    if (!std::isnan(a)) worst = std::max(worst, std::abs(a - e));
  }
  return worst;
}

}  // namespace attnlens::testing

// EXPECT that two tensors agree to `tol`, printing the maximum error.
#define ATTNLENS_EXPECT_CLOSE(actual, expected, tol)                                   \
  do {                                                                                 \
    const double attnlens_err_ = ::attnlens::testing::max_abs_error(actual, expected); \
    EXPECT_LE(attnlens_err_, (tol)) << #actual << " vs " << #expected;                 \
  } while (0)
