// ViTs in and out of PyTorch (docs/model-format.md, "Bringing a PyTorch or timm ViT in and out";
// tests/reference/oracles/interop.py): directories that examples/export_pytorch.py wrote from
// the state_dicts of a timm-structured ViT, a ViT with torchvision's names and an nn.Conv2d +
// nn.TransformerEncoder ViT classify as those PyTorch modules do; on attnlens ViT directories
// attnlens gives the logits of examples/load_in_pytorch.py. Set ATTNLENS_INTEROP_REPORT=1 to
// print the largest differences.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "attnlens/io/vit_model.hpp"
#include "support/fixtures.hpp"

namespace attnlens {
namespace {

// attnlens's logits in T on the fixture's images against its PyTorch logits: 1e-4 relative
// (1e-5 absolute) when the fixture or T is float, 1e-9 when both are double.
template <class T>
void expect_pytorch_logits(const std::string& name) {
  constexpr bool in_double = std::is_same_v<T, double>;
  SCOPED_TRACE(name + (in_double ? " in double" : " in float"));
  const io::SafeTensors expected = testing::load_fixture(name + "_expected.safetensors");
  const io::SafeTensors images = testing::load_fixture(name + "_images.safetensors");
  const bool f64 = expected.metadata().at("dtype") == "float64";
  const VisionTransformer<T> vit = io::load_vit_model<T>(testing::fixture_path(name));
  const Tensor<T> logits = vit.forward(images.get<T>("images")).logits;
  const Tensor<T> reference = expected.get<T>("logits");
  ASSERT_EQ(logits.dim(0), images.info("images").shape[0]);
  if (in_double && f64) {
    ATTNLENS_EXPECT_RELATIVE_CLOSE(logits, reference, 1e-9, 1e-9);
  } else {
    ATTNLENS_EXPECT_RELATIVE_CLOSE(logits, reference, 1e-4, 1e-5);
  }
  if (std::getenv("ATTNLENS_INTEROP_REPORT")) {
    const double absolute = testing::max_abs_error(logits, reference);
    const auto relative = testing::compare(logits, reference, {1e-30L, 1}).max_error;
    std::printf("%-28s %-6s (fixture %s): max |error| %.3g, max relative %.3g\n", name.c_str(),
                in_double ? "double" : "float", f64 ? "f64" : "f32", absolute,
                static_cast<double>(relative));
  }
}

void expect_pytorch_logits_in_both(const std::string& name) {
  expect_pytorch_logits<float>(name);
  expect_pytorch_logits<double>(name);
}

TEST(VitInterop, TimmStructuredViTExportedClassifiesAsPyTorch) {
  expect_pytorch_logits_in_both("interop_timm_vit");
  const VisionTransformerOptions o =
      io::load_vit_config(testing::fixture_path("interop_timm_vit")).vit;
  EXPECT_EQ(o.image_height, 16);  // from pos_embed's 1 + 16 rows
  EXPECT_EQ(o.encoder.layer.nhead, 3);
  EXPECT_TRUE(o.encoder.layer.norm_first);
  EXPECT_TRUE(o.class_token);
  EXPECT_EQ(o.pooling, VitPooling::token);
}

TEST(VitInterop, TorchvisionViTExportedClassifiesAsPyTorch) {
  expect_pytorch_logits_in_both("interop_torchvision_vit");
  const VisionTransformerOptions o =
      io::load_vit_config(testing::fixture_path("interop_torchvision_vit")).vit;
  EXPECT_TRUE(o.encoder.layer.norm_first);
  EXPECT_DOUBLE_EQ(o.encoder.layer.layer_norm_eps, 1e-6);
  EXPECT_EQ(o.encoder.layer.dim_feedforward, 64);
  EXPECT_TRUE(o.encoder.final_norm);  // encoder.ln
}

// nn.TransformerEncoderLayer's post-norm blocks stay post-norm; no class token, mean pooling,
// a non-square image (--img-size), nn.TransformerEncoder's own final norm.
TEST(VitInterop, ConvPlusTransformerEncoderViTExportedClassifiesAsPyTorch) {
  expect_pytorch_logits_in_both("interop_torch_vit");
  const VisionTransformerOptions o =
      io::load_vit_config(testing::fixture_path("interop_torch_vit")).vit;
  EXPECT_FALSE(o.encoder.layer.norm_first);
  EXPECT_EQ(o.encoder.layer.activation, Activation::gelu);
  EXPECT_DOUBLE_EQ(o.encoder.layer.layer_norm_eps, 1e-5);
  EXPECT_TRUE(o.encoder.final_norm);
  EXPECT_FALSE(o.class_token);
  EXPECT_EQ(o.pooling, VitPooling::mean);
  EXPECT_EQ(o.image_height, 8);
  EXPECT_EQ(o.image_width, 12);
}

// The other way: the logits are load_in_pytorch.py's. Pre-norm with a CLS token and tanh GELU
// (float32); post-norm without biases, class token, positions, final norm or head (float64:
// the pooled features).
TEST(VitInterop, LoadInPyTorchGivesAttnlensLogits) {
  expect_pytorch_logits_in_both("interop_attnlens_vit_pre");
  expect_pytorch_logits_in_both("interop_attnlens_vit_post");
  const io::VitModelConfig post =
      io::load_vit_config(testing::fixture_path("interop_attnlens_vit_post"));
  EXPECT_FALSE(post.vit.encoder.layer.bias);
  EXPECT_FALSE(post.vit.encoder.layer.norm_first);
  EXPECT_EQ(post.vit.num_classes, 0);
  EXPECT_EQ(post.vit.position, VitPosition::none);
  const io::VitModelConfig pre =
      io::load_vit_config(testing::fixture_path("interop_attnlens_vit_pre"));
  EXPECT_EQ(pre.mean.size(), 3u);
  EXPECT_EQ(pre.vit.encoder.layer.activation, Activation::gelu_tanh);
}

}  // namespace
}  // namespace attnlens
