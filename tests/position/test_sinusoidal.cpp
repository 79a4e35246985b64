// Sinusoidal absolute encodings (1-D interleaved, 2-D row/column halves) and the learned
// table, against the PyTorch oracle.
#include <gtest/gtest.h>

#include "attnlens/position/sinusoidal.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

template <class T>
class SinusoidalTest : public ::testing::Test {};
TYPED_TEST_SUITE(SinusoidalTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(SinusoidalTest, TablesMatchOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = testing::default_tolerance<T>();
  ATTNLENS_EXPECT_CLOSE(Tensor<T>::from_matrix(sinusoidal_encoding<T>(50, 16)),
                        file.get<T>("sinusoidal.table"), tol);
  ATTNLENS_EXPECT_CLOSE(Tensor<T>::from_matrix(sinusoidal_encoding_2d<T>({4, 5, 1}, 16)),
                        file.get<T>("sinusoidal_2d.table"), tol);
}

TEST(Sinusoidal, AddedToEverySequenceOfABatch) {
  Tensor<double> x({2, 3, 4});
  add_absolute_positions<double>(x, sinusoidal_encoding<double>(5, 4));
  EXPECT_DOUBLE_EQ(x.at({1, 2, 0}), std::sin(2.0));
  EXPECT_DOUBLE_EQ(x.at({0, 2, 3}), std::cos(2.0 / 100.0));
  EXPECT_DOUBLE_EQ(x.at({1, 0, 1}), 1.0);
}

TEST(Sinusoidal, BadArgumentsNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { (void)sinusoidal_encoding<float>(4, 7); }, "embed_dim");
  expect_error_naming<ArgumentError>([] { (void)sinusoidal_encoding<float>(4, 8, 1.0); }, "base");
  expect_error_naming<ArgumentError>([] { (void)sinusoidal_encoding<float>(-1, 8); }, "length");
  expect_error_naming<ArgumentError>(
      [] {
        (void)sinusoidal_encoding_2d<float>({2, 2}, 6);
      },
      "embed_dim");
  expect_error_naming<ArgumentError>(
      [] {
        (void)sinusoidal_encoding_2d<float>({0, 2}, 8);
      },
      "grid");
  Tensor<float> x({2, 6, 8});
  expect_error_naming<ShapeError>(
      [&] { add_absolute_positions<float>(x, sinusoidal_encoding<float>(5, 8)); },
      "position table");
  Tensor<float> flat({8});
  expect_error_naming<ShapeError>(
      [&] { add_absolute_positions<float>(flat, sinusoidal_encoding<float>(5, 8)); }, "x");
}

}  // namespace
}  // namespace attnlens
