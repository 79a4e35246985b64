#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "attnlens/core/tensor.hpp"

namespace attnlens {
namespace {

TEST(Tensor, MatrixViewsMapTheTrailingAxesWithoutCopying) {
  Tensor<float> t({2, 3, 4});
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i);
  auto m = t.matrix({1});
  EXPECT_EQ(m.rows(), 3);
  EXPECT_EQ(m.cols(), 4);
  EXPECT_EQ(m(2, 1), 12 + 2 * 4 + 1);
  m(0, 0) = -1.0f;
  EXPECT_EQ(t.at({1, 0, 0}), -1.0f);
  EXPECT_EQ(t.data() + 12, m.data());
}

TEST(Tensor, RankOneIsARowAndReshapeKeepsData) {
  Tensor<double> t({3}, {1.0, 2.0, 3.0});
  EXPECT_EQ(t.matrix().rows(), 1);
  EXPECT_EQ(t.matrix()(0, 2), 3.0);
  const auto r = t.reshaped({3, 1});
  EXPECT_EQ(r.matrix()(2, 0), 3.0);
  EXPECT_THROW(t.reshaped({2, 2}), ShapeError);
}

TEST(Tensor, FromMatrixAndCast) {
  Matrix<double> m(2, 2);
  m << 1.5, -2.5, 3.25, 4.0;
  const auto t = Tensor<double>::from_matrix(m);
  EXPECT_EQ(t.shape(), (Shape{2, 2}));
  const auto f = t.cast<float>();
  EXPECT_EQ(f.at({1, 0}), 3.25f);
}

TEST(Tensor, BadShapesAndIndicesThrowWithNames) {
  EXPECT_THROW(Tensor<float>({2, -1}), ShapeError);
  const Index big = std::numeric_limits<Index>::max() / 2;
  try {
    Tensor<float> t({big, big});
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos) << e.what();
  }
  try {
    Tensor<float> t({2, 2}, {1.0f, 2.0f, 3.0f});
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("expected 4 elements"), std::string::npos) << e.what();
  }
  Tensor<float> t({2, 3, 4});
  EXPECT_THROW(t.matrix({2}), ArgumentError);
  EXPECT_THROW(t.matrix(), ArgumentError);
  EXPECT_THROW(t.at({0, 3, 0}), ArgumentError);
  EXPECT_THROW(t.at({0, 0}), ArgumentError);
  EXPECT_THROW(t.dim(3), ArgumentError);
}

}  // namespace
}  // namespace attnlens
