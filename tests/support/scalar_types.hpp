// The scalar types a typed test runs with, named float and double in the test names
// (RopeTest/float.Case rather than RopeTest/0.Case).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <type_traits>

namespace attnlens::testing {

using Scalars = ::testing::Types<float, double>;

struct ScalarName {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

}  // namespace attnlens::testing
