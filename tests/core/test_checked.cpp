// checked_add / checked_mul / checked_product / checked_side: sizes from files and options never
// wrap around; each overflow names what it sizes.
#include <gtest/gtest.h>

#include <limits>

#include "attnlens/core/checked.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;
constexpr Index k_max = std::numeric_limits<Index>::max();

TEST(Checked, ExactResultsUpToTheLargestIndex) {
  EXPECT_EQ(detail::checked_add(k_max - 1, 1, "x"), k_max);
  EXPECT_EQ(detail::checked_mul(k_max, 1, "x"), k_max);
  EXPECT_EQ(detail::checked_mul(0, k_max, "x"), 0);
  EXPECT_EQ(detail::checked_mul(k_max, 0, "x"), 0);
  EXPECT_EQ(detail::checked_mul(3037000499, 3037000499, "x"), Index(9223372030926249001));
  EXPECT_EQ(detail::checked_product({2, 3, 7}, "x"), 42);
  EXPECT_EQ(detail::checked_product({}, "x"), 1);
  EXPECT_EQ(detail::checked_side(0, "x"), 1);
  EXPECT_EQ(detail::checked_side(k_max / 2, "x"), k_max);
}

TEST(Checked, OverflowAndNegativeSizesNameWhatTheySize) {
  expect_error_naming<ArgumentError>([] { detail::checked_add(k_max, 1, "the window"); },
                                     "the window: 9223372036854775807 + 1 overflows");
  expect_error_naming<ArgumentError>([] { detail::checked_mul(3037000500, 3037000500, "rows"); },
                                     "rows: 3037000500 x 3037000500 overflows");
  expect_error_naming<ArgumentError>([] { detail::checked_mul(-1, 2, "rows"); }, "non-negative");
  expect_error_naming<ArgumentError>([] { detail::checked_add(1, -2, "rows"); }, "non-negative");
  // A product that overflows only at its last factor, and one whose zero comes too late.
  expect_error_naming<ArgumentError>(
      [] {
        detail::checked_product({1 << 20, 1 << 20, 1 << 24}, "t");
      },
      "overflows");
  expect_error_naming<ArgumentError>(
      [] {
        detail::checked_product({k_max, 2, 0}, "t");
      },
      "overflows");
  expect_error_naming<ArgumentError>([] { detail::checked_side(k_max / 2 + 1, "patch radius"); },
                                     "patch radius");
  expect_error_naming<ArgumentError>([] { detail::checked_side(k_max, "patch radius"); },
                                     "patch radius");
  // The error type is the caller's: readers throw IoError.
  EXPECT_THROW(detail::checked_mul<IoError>(k_max, 2, "f"), IoError);
}

}  // namespace
}  // namespace attnlens
