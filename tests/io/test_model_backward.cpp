// The backward pass of every exported encoder model directory (tests/reference/data/
// blocks_model_*: every position encoding and attention variant) against torch.autograd
// (tests/reference/oracles/gradients.py): dL/dsrc and every tensor of model.safetensors, to the
// gradient tolerance (float 1e-4 relative, 1e-5 absolute; double 1e-9, 1e-10).
#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "attnlens/io/model.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "support/fixtures.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

template <class T>
void expect_model_gradients_match(const std::string& name) {
  SCOPED_TRACE("blocks_model_" + name);
  const std::string stem = testing::fixture_path("blocks_model_" + name);
  const auto expected = io::SafeTensors::load(stem + "_grad_expected.safetensors");
  ASSERT_EQ(expected.metadata().at("double"), (std::is_same_v<T, double> ? "true" : "false"));
  const auto encoder = io::load_encoder_model<T>(stem);
  const auto input = io::SafeTensors::load(stem + "_input.safetensors");
  const Tensor<T> src = input.get<T>("src");
  const Index L = src.dim(1);
  const auto mask =
      io::read_torch_masks<T>(input, io::TorchMaskNames{"src_key_padding_mask", "mask"},
                              {src.dim(0), encoder.nhead(), L, L});
  EncoderCache<T> cache;
  encoder.forward(src, mask, {}, &cache);
  TransformerEncoder<T> gradient = zeros_like(encoder);
  const auto doutput = io::SafeTensors::load(stem + "_grad_output.safetensors").get<T>("output");
  const Tensor<T> dsrc = encoder.backward(cache, doutput, gradient);
  ATTNLENS_EXPECT_GRADIENT_MATCHES(T, dsrc, expected.get<T>("src"));
  testing::expect_parameter_gradients_match(expected, "", gradient);
}

TEST(ModelBackward, EncodersWithPositionsMatchPyTorchAutograd) {
  expect_model_gradients_match<float>("t5");
  expect_model_gradients_match<double>("alibi_kpm");
  expect_model_gradients_match<float>("learned_fidelity_learned");
  expect_model_gradients_match<double>("sinusoidal_fidelity");
  expect_model_gradients_match<float>("shaw");
  expect_model_gradients_match<double>("transformer_xl");
  expect_model_gradients_match<double>("rope_half");
  expect_model_gradients_match<float>("rope_interleaved");
}

TEST(ModelBackward, EncodersWithAttentionVariantsMatchPyTorchAutograd) {
  expect_model_gradients_match<float>("twicing_kpm");
  expect_model_gradients_match<double>("boost2_alibi");
  expect_model_gradients_match<float>("twicing_t5_kpm");
  expect_model_gradients_match<float>("bilateral_gaussian_kpm");
  expect_model_gradients_match<double>("bilateral_laplacian_leading_twicing");
  expect_model_gradients_match<float>("bilateral_rope");
  expect_model_gradients_match<float>("kde");
  expect_model_gradients_match<double>("robust_kde_kpm");
  expect_model_gradients_match<float>("fourier");
  expect_model_gradients_match<float>("elliptical_kpm");
  expect_model_gradients_match<double>("neutreno");
}

}  // namespace
}  // namespace attnlens
