// PatchEmbedding against a direct stride = kernel convolution loop, its parameter layout
// (the Conv2d weight [E, C, P, P]) and bad input. Against PyTorch's F.conv2d it is checked
// inside the vision transformer fixtures (tests/blocks/test_vision_transformer.cpp), its
// backward pass against central differences and PyTorch autograd (oracles/layers.py).
#include <gtest/gtest.h>

#include "attnlens/layers/patch_embedding.hpp"
#include "support/blocks.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(PatchEmbedding, EqualsAStrideEqualsKernelConvolution) {
  Rng rng(51);
  PatchEmbedding<double> embed({2, 5, 3, true});
  embed.reset_parameters(rng);
  const auto images = testing::random_tensor<double>({2, 2, 6, 9}, rng);
  const auto out = embed.forward(images);
  ASSERT_EQ(out.shape(), (Shape{2, 6, 5}));
  // weight[e, c, ky, kx] is column (c * P + ky) * P + kx of row e.
  for (Index b = 0; b < 2; ++b)
    for (Index r = 0; r < 2; ++r)
      for (Index q = 0; q < 3; ++q)
        for (Index e = 0; e < 5; ++e) {
          double sum = embed.proj.bias[e];
          for (Index c = 0; c < 2; ++c)
            for (Index ky = 0; ky < 3; ++ky)
              for (Index kx = 0; kx < 3; ++kx)
                sum += embed.proj.weight(e, (c * 3 + ky) * 3 + kx) *
                       images.at({b, c, r * 3 + ky, q * 3 + kx});
          EXPECT_NEAR(out.at({b, r * 3 + q, e}), sum, 1e-13);
        }
}

TEST(PatchEmbedding, VisitsTheWeightWithItsConvShape) {
  PatchEmbedding<float> embed({3, 4, 2, true});
  std::vector<Shape> stored;
  for_each_parameter(embed, "patch_embed.",
                     [&](const std::string& name, auto& p, const Shape& shape = {}) {
                       stored.push_back(shape.empty() ? Shape{p.size()} : shape);
                       EXPECT_EQ(name.rfind("patch_embed.proj.", 0), 0u) << name;
                     });
  EXPECT_EQ(stored, (std::vector<Shape>{{4, 3, 2, 2}, {4}}));
}

TEST(PatchEmbedding, BadOptionsAndShapesNameTheArgument) {
  expect_error_naming<ArgumentError>([] { PatchEmbedding<float>({0, 4, 2}); }, "in_chans");
  expect_error_naming<ArgumentError>([] { PatchEmbedding<float>({3, 0, 2}); }, "embed_dim");
  expect_error_naming<ArgumentError>([] { PatchEmbedding<float>({3, 4, 0}); }, "patch_size");
  const PatchEmbedding<float> embed({3, 4, 2});
  expect_error_naming<ShapeError>([&] { embed.forward(Tensor<float>({1, 3, 5, 4})); }, "images");
  expect_error_naming<ShapeError>([&] { embed.forward(Tensor<float>({1, 2, 4, 4})); }, "images");
  expect_error_naming<ShapeError>([&] { embed.forward(Tensor<float>({3, 4, 4})); }, "images");
}

TEST(PatchEmbeddingBackward, EqualsCentralDifferences) {
  Rng rng(52);
  PatchEmbedding<double> embed({3, 4, 2, true});
  embed.reset_parameters(rng);
  init::normal(embed.proj.bias, rng);
  auto images = testing::random_tensor<double>({2, 3, 4, 6}, rng);  // 2 x 3 patches each
  const Matrix<double> probe = testing::random_probe(2 * 6, 4, 53);
  const auto loss = [&] {
    const Tensor<double> y = embed.forward(images);
    return (ConstMatrixMap<double>(y.data(), 12, 4).array() * probe.array()).sum();
  };
  PatchEmbedding<double> gradient = zeros_like(embed);
  auto dimages =
      embed.backward(images, Tensor<double>::from_matrix(probe).reshaped({2, 6, 4}), gradient);
  ASSERT_EQ(dimages.shape(), images.shape());
  ATTNLENS_EXPECT_GRADIENT(loss, images.data(), images.size(), dimages.data(), 1e-6);
  testing::expect_parameter_gradients(embed, gradient, loss);
}

template <class T>
void check_patch_embedding_backward_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers_grad");
  const int checked =
      testing::for_each_case(file, "patch_embedding", [&](const auto& c, const auto& prefix) {
        PatchEmbedding<T> embed({c["in_chans"], c["embed_dim"], c["patch_size"], true});
        io::load_parameters(file, prefix, embed);
        PatchEmbedding<T> gradient = zeros_like(embed);
        const Tensor<T> dimages = embed.backward(file.get<T>(prefix + "input"),
                                                 file.get<T>(prefix + "grad_output"), gradient);
        testing::expect_gradients_match(file, prefix, dimages, gradient);
      });
  EXPECT_EQ(checked, 1);
}

TEST(PatchEmbeddingBackward, MatchesPyTorchAutogradFloat) {
  check_patch_embedding_backward_against_pytorch<float>();
}
TEST(PatchEmbeddingBackward, MatchesPyTorchAutogradDouble) {
  check_patch_embedding_backward_against_pytorch<double>();
}

TEST(PatchEmbeddingBackward, BadShapesNameTheArgument) {
  const PatchEmbedding<float> embed({3, 4, 2});
  PatchEmbedding<float> gradient = zeros_like(embed);
  const Tensor<float> images({2, 3, 4, 6});
  expect_error_naming<ShapeError>(
      [&] {
        embed.backward(images, Tensor<float>({2, 5, 4}), gradient);
      },
      "PatchEmbedding backward dy: expected [2, 6, 4], got [2, 5, 4]");
  expect_error_naming<ShapeError>(
      [&] {
        embed.backward(Tensor<float>({2, 3, 5, 6}), Tensor<float>({2, 6, 4}), gradient);
      },
      "images");
}

}  // namespace
}  // namespace attnlens
