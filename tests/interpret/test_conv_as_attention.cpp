// Convolution as attention (docs/math.md section 4): the K^2-head quadratic MHSA against the
// direct convolution and torch.nn.functional.conv2d (tests/reference/data/conv_f64), with
// the error falling as alpha grows as docs/math.md states.
#include <gtest/gtest.h>

#include <cstdio>

#include "attnlens/interpret/conv_as_attention.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

TEST(ConvAsAttention, DirectConvolutionMatchesPyTorch) {
  const auto file = testing::load_fixture("conv_f64.safetensors");
  for (const std::string name : {"k3", "k5", "k1"}) {
    SCOPED_TRACE(name);
    const auto output =
        conv2d_same<double>(file.get<double>(name + ".weight"), file.get<double>(name + ".bias"),
                            file.get<double>(name + ".input"));
    ATTNLENS_EXPECT_CLOSE(output, file.get<double>(name + ".output"), 1e-12);
  }
}

// The error table of docs/math.md: max |MHSA - conv| over alpha; it must fall with alpha and reach
// 1e-5 at alpha 16 and 1e-11 at alpha 32 (double).
TEST(ConvAsAttention, ErrorFallsWithAlphaAsMathMdStates) {
  const auto file = testing::load_fixture("conv_f64.safetensors");
  for (const std::string name : {"k3", "k5", "k1"}) {
    SCOPED_TRACE(name);
    const Tensor<double> weight = file.get<double>(name + ".weight");
    const Tensor<double> bias = file.get<double>(name + ".bias");
    const Tensor<double> image = file.get<double>(name + ".input");
    const Tensor<double> expected = file.get<double>(name + ".output");
    const Tensor<double> direct = conv2d_same(weight, bias, image);
    double previous = INFINITY;
    std::printf(
        "conv-as-attention %s (%ld x %ld image): alpha, max |MHSA - F.conv2d|, max |MHSA - "
        "direct|\n",
        name.c_str(), static_cast<long>(image.dim(1)), static_cast<long>(image.dim(2)));
    for (const double alpha : {4.0, 8.0, 16.0, 32.0}) {
      const ConvAsAttention<double> layer(weight, bias, {image.dim(1), image.dim(2), alpha});
      const Tensor<double> output = layer.forward(image);
      const double error = testing::max_abs_error(output, expected);
      const double error_direct = testing::max_abs_error(output, direct);
      std::printf("  %4.0f  %.3e  %.3e\n", alpha, error, error_direct);
      EXPECT_LT(error, previous) << alpha;
      if (alpha == 16.0) {
        EXPECT_LE(error, 1e-5);
      }
      if (alpha == 32.0) {
        EXPECT_LE(error, 1e-11);
      }
      previous = error;
    }
  }
}

TEST(ConvAsAttention, FloatReachesFloatPrecisionAtAlpha20) {
  const auto file = testing::load_fixture("cli/conv_k3_input.safetensors");
  const Tensor<float> weight = file.get<float>("weight"), bias = file.get<float>("bias");
  const Tensor<float> image = file.get<float>("input");
  const ConvAsAttention<float> layer(weight, bias, {image.dim(1), image.dim(2), 20.0});
  const auto expected = testing::load_fixture("cli/conv_k3_expected.safetensors");
  ATTNLENS_EXPECT_CLOSE(layer.forward(image), expected.get<float>("output"), 1e-5);
}

// The construction of docs/math.md section 4: one head per shift, keys on the padded grid, the
// conv weights in out_proj.
TEST(ConvAsAttention, HeadsAttendToTheirShift) {
  const auto file = testing::load_fixture("conv_f64.safetensors");
  const Tensor<double> weight = file.get<double>("k3.weight");
  const ConvAsAttention<double> layer(weight, file.get<double>("k3.bias"), {7, 8, 16.0});
  EXPECT_EQ(layer.attention.num_heads(), 9);
  EXPECT_EQ(layer.position->key_grid().tokens(), 9 * 10);
  EXPECT_EQ(layer.position->center_shift(0, 0), -1.0);
  EXPECT_EQ(layer.position->center_shift(5, 1), 1.0);
  EXPECT_EQ(layer.attention.out_proj.weight(2, 5 * layer.attention.head_dim() + 1),
            weight.at({2, 1, 1, 2}));
}

// A 1 x 1 conv with D_out = D_in gives embed_dim = kdim = vdim: the packed projection path.
TEST(ConvAsAttention, PackedProjectionWhenChannelsMatch) {
  Rng rng(17);
  Tensor<double> weight({3, 3, 1, 1}), bias({3}), image({3, 4, 5});
  for (Tensor<double>* t : {&weight, &bias, &image})
    for (auto& v : t->storage()) v = rng.normal<double>();
  const ConvAsAttention<double> layer(weight, bias, {4, 5, 32.0});
  EXPECT_TRUE(layer.attention.packed());
  ATTNLENS_EXPECT_CLOSE(layer.forward(image), conv2d_same(weight, bias, image), 1e-11);
}

TEST(ConvAsAttention, BadInputNamesTheArgument) {
  using testing::expect_error_naming;
  const Tensor<double> weight({2, 3, 3, 3}), bias({2});
  expect_error_naming<ShapeError>(
      [&] {
        ConvAsAttention<double>(Tensor<double>({2, 3, 2, 2}), bias, {4, 4});
      },
      "conv weight");
  expect_error_naming<ShapeError>(
      [&] {
        ConvAsAttention<double>(weight, Tensor<double>({3}), {4, 4});
      },
      "conv bias");
  expect_error_naming<ArgumentError>(
      [&] {
        ConvAsAttention<double>(weight, bias, {0, 4});
      },
      "height x width");
  expect_error_naming<ArgumentError>(
      [&] {
        ConvAsAttention<double>(weight, bias, {4, 4, 0.0});
      },
      "alpha");
  const ConvAsAttention<double> layer(weight, bias, {4, 5});
  expect_error_naming<ShapeError>(
      [&] {
        (void)layer.forward(Tensor<double>({3, 5, 4}));
      },
      "conv input");
  expect_error_naming<ShapeError>(
      [&] {
        (void)conv2d_same(weight, bias, Tensor<double>({2, 4, 4}));
      },
      "conv input");
}

}  // namespace
}  // namespace attnlens
