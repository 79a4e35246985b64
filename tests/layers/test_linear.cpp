#include <gtest/gtest.h>

#include <string>

#include "attnlens/layers/linear.hpp"

namespace attnlens {
namespace {

TEST(Linear, ComputesXWTransposePlusBias) {
  Linear<double> linear(LinearOptions{3, 2, true});
  linear.weight << 1, 2, 3, -1, 0, 1;
  linear.bias << 0.5, -0.5;
  Matrix<double> x(2, 3);
  x << 1, 1, 1, 2, 0, -1;
  Matrix<double> expected(2, 2);
  expected << 6.5, -0.5, -0.5, -3.5;
  EXPECT_EQ(linear.forward(x), expected);
}

TEST(Linear, WithoutBias) {
  Linear<float> linear(LinearOptions{2, 2, false});
  EXPECT_FALSE(linear.has_bias());
  linear.weight << 1, 0, 0, 2;
  Matrix<float> x(1, 2);
  x << 3, 4;
  EXPECT_EQ(linear.forward(x)(0, 1), 8.0f);
}

TEST(Linear, BadShapesNameTheArgument) {
  EXPECT_THROW(Linear<float>(LinearOptions{0, 2, true}), ArgumentError);
  Linear<float> linear(LinearOptions{3, 2, true});
  Matrix<float> x(4, 2);
  try {
    linear.forward(x);
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("Linear input"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected 3"), std::string::npos) << e.what();
  }
  linear.bias.resize(5);
  EXPECT_THROW(linear.check_parameters("out_proj"), ShapeError);
}

}  // namespace
}  // namespace attnlens
