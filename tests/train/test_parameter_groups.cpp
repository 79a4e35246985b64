// The weight-decay groups: the pattern rule, and the default rule on the names real modules
// produce (VisionTransformer with CLS token, pos_embed and 2-D relative terms; TransformerEncoder
// with every relative encoding of the registry, learned absolute positions, the fidelity
// residual and the variants' parameters): only the weights of linear maps decay.
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/position/distance_kernel.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/registry.hpp"
#include "attnlens/train/parameter_groups.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(ParameterGroups, PatternsMatchTrailingComponents) {
  EXPECT_TRUE(matches_parameter_pattern("bias", "bias"));
  EXPECT_TRUE(matches_parameter_pattern("bias", "layers.0.linear1.bias"));
  EXPECT_FALSE(matches_parameter_pattern("bias", "layers.0.linear1.bias.extra"));
  EXPECT_FALSE(matches_parameter_pattern("bias", "unbias"));  // whole components only
  EXPECT_TRUE(matches_parameter_pattern("*bias", "self_attn.in_proj_bias"));
  EXPECT_TRUE(matches_parameter_pattern("norm*.weight", "layers.3.norm2.weight"));
  EXPECT_TRUE(matches_parameter_pattern("norm*.weight", "norm.weight"));
  // '*' stays inside a component.
  EXPECT_FALSE(matches_parameter_pattern("norm*.weight", "norm1.extra.weight"));
  EXPECT_TRUE(matches_parameter_pattern("blocks.*.self_attn.*", "blocks.11.self_attn.rho"));
  EXPECT_FALSE(matches_parameter_pattern("blocks.*.self_attn.*", "blocks.1.linear1.weight"));
  EXPECT_TRUE(matches_parameter_pattern("a*b*c", "aXbYbZc"));  // the star backtracks
  EXPECT_FALSE(matches_parameter_pattern("a*b*c", "aXbYbZ"));
  EXPECT_TRUE(matches_parameter_pattern("*", "x"));
  EXPECT_FALSE(matches_parameter_pattern("head.weight", "weight"));  // fewer components
}

TEST(ParameterGroups, RejectsEmptyPatternsAndComponents) {
  Vector<float> v(1);
  const std::vector<NamedParameter<float>> list{{"a", v.data(), 1, {1}}};
  for (const char* bad : {"", ".bias", "bias.", "a..b"})
    expect_error_naming<ArgumentError>(
        [&] {
          weight_decay_groups(list, {"x", bad});
        },
        "no_weight_decay[1]");
}

// What the default rule must decay: the weights of the linear maps, nothing else.
bool linear_weight(const std::string& name) {
  for (const char* pattern :
       {"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight",
        "linear1.weight", "linear2.weight", "patch_embed.proj.weight", "head.weight",
        "attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"})
    if (matches_parameter_pattern(pattern, name)) return true;
  return false;
}

template <template <class> class Module, class T>
void expect_only_linear_weights_decay(Module<T>& module) {
  const WeightDecayGroups groups = weight_decay_groups(module);
  for (const std::string& name : groups.decayed) EXPECT_TRUE(linear_weight(name)) << name;
  for (const std::string& name : groups.not_decayed) EXPECT_FALSE(linear_weight(name)) << name;
  EXPECT_EQ(groups.decayed.size() + groups.not_decayed.size(), named_parameters(module).size());
  EXPECT_FALSE(groups.decayed.empty());
}

VisionTransformerOptions small_vit(PositionType relative) {
  VisionTransformerOptions o;
  o.image_height = 8;
  o.image_width = 8;
  o.patch_size = 4;
  o.in_chans = 1;
  o.num_classes = 3;
  o.encoder.layer = {8, 2, 16, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  o.relative_position.type = relative;
  return o;
}

TEST(ParameterGroups, DefaultRuleOnAVisionTransformer) {
  VisionTransformer<float> vit(small_vit(PositionType::quadratic));
  const WeightDecayGroups groups = weight_decay_groups(vit);
  std::vector<std::string> decayed{"patch_embed.proj.weight"};
  for (const char* block : {"blocks.0.", "blocks.1."})
    for (const char* name :
         {"attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"})
      decayed.push_back(std::string(block) + name);
  decayed.push_back("head.weight");
  EXPECT_EQ(groups.decayed, decayed);
  const std::set<std::string> excluded(groups.not_decayed.begin(), groups.not_decayed.end());
  for (const char* name :
       {"patch_embed.proj.bias", "cls_token", "pos_embed", "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.bias", "blocks.1.norm1.weight", "blocks.1.norm2.weight",
        "blocks.1.norm2.bias", "blocks.0.attn.alpha", "blocks.1.attn.center_shift", "norm.weight",
        "norm.bias", "head.bias"})
    EXPECT_EQ(excluded.count(name), 1u) << name;

  VisionTransformer<float> learned_2d(small_vit(PositionType::learned_2d));
  expect_only_linear_weights_decay(learned_2d);
  EXPECT_EQ(weight_decay_groups(learned_2d).not_decayed.size(),
            weight_decay_groups(vit).not_decayed.size() + 2 * (4 - 2));
}

TEST(ParameterGroups, DefaultRuleOnEncodersWithEveryRelativeEncoding) {
  int encodings = 0;
  for (const PositionEncoding& entry : position_encodings()) {
    if (entry.kind != PositionKind::relative) continue;  // the grid ones: the ViT test
    SCOPED_TRACE(entry.type.name());
    EncoderOptions o;
    o.layer = {8, 2, 16};
    o.num_layers = 2;
    o.final_norm = true;
    o.position.type = entry.type;
    TransformerEncoder<double> encoder(o);
    expect_only_linear_weights_decay(encoder);
    ++encodings;
  }
  EXPECT_GE(encodings, 6);  // shaw, transformer_xl, t5, alibi, rope, cauchy

  // Learned absolute positions, a learned fidelity residual, and the variants' parameters.
  EncoderOptions o;
  o.layer = {8, 2, 16};
  o.num_layers = 2;
  o.position.type = PositionType::learned;
  o.position.max_len = 6;
  o.residual = {ResidualType::fidelity, {0.3}, true};
  for (AttentionVariantType variant :
       {AttentionVariantType::bilateral, AttentionVariantType::fourier}) {
    o.layer.attention.type = variant;
    TransformerEncoder<double> encoder(o);
    const WeightDecayGroups groups = weight_decay_groups(encoder);
    expect_only_linear_weights_decay(encoder);
    const std::set<std::string> excluded(groups.not_decayed.begin(), groups.not_decayed.end());
    EXPECT_EQ(excluded.count("position_embeddings.weight"), 1u);
    EXPECT_EQ(excluded.count("fidelity_lambda"), 1u);
    EXPECT_EQ(
        excluded.count(variant == AttentionVariantType::bilateral ? "layers.1.self_attn.rho"
                                                                  : "layers.1.self_attn.fourier_r"),
        1u);
  }
}

TEST(ParameterGroups, DefaultRuleCoversEveryFactorParameter) {
  // Every parameter a registered relative or grid encoding declares, and the factors attached
  // by hand (a distance kernel's sigma, the generalized quadratic encoding): none decays. A new
  // encoding whose parameter names the default rule misses fails here.
  const std::vector<std::string> rule = default_no_weight_decay();
  for (const PositionEncoding& entry : position_encodings()) {
    if (!entry.parameters || entry.kind == PositionKind::absolute) continue;
    PositionOptions options;
    options.type = entry.type;
    options.max_position = 3;
    options.grid = {3, 3};
    for (const ParameterShape& p : entry.parameters(options, 8, 2, "test"))
      EXPECT_TRUE(excluded_from_weight_decay("layers.0.self_attn." + p.name, rule))
          << entry.type.name() << ": " << p.name;
  }
  MultiHeadAttention<float> mha({8, 2});
  mha.score_terms.push_back(
      std::make_shared<DistanceKernel<float>>(DistanceKernelOptions{}, Vector<float>::Ones(2)));
  mha.score_terms.push_back(std::make_shared<GeneralizedQuadraticEncoding<float>>(
      QuadraticEncodingOptions{2, Grid2d{2, 2}}));
  expect_only_linear_weights_decay(mha);
  EXPECT_EQ(weight_decay_groups(mha).not_decayed,
            (std::vector<std::string>{"in_proj_bias", "out_proj.bias", "sigma", "center_shift",
                                      "inverse_covariance"}));
}

TEST(ParameterGroups, DefaultRuleOnTimmNames) {
  // timm's VisionTransformer state_dict names (VisionTransformer's own, io/vit_model.hpp).
  const std::vector<std::string> rule = default_no_weight_decay();
  for (const char* name :
       {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "head.weight"})
    EXPECT_FALSE(excluded_from_weight_decay(name, rule)) << name;
  for (const char* name : {"cls_token", "pos_embed", "patch_embed.proj.bias",
                           "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias",
                           "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.bias",
                           "blocks.0.norm2.weight", "norm.weight", "fc_norm.weight", "head.bias"})
    EXPECT_TRUE(excluded_from_weight_decay(name, rule)) << name;
}

TEST(ParameterGroups, CustomPatterns) {
  VisionTransformer<float> vit(small_vit(PositionType::none));
  // PyTorch's single group: everything decays.
  EXPECT_TRUE(weight_decay_groups(vit, {}).not_decayed.empty());
  // The default rule plus the head.
  std::vector<std::string> rule = default_no_weight_decay();
  rule.push_back("head.*");
  const WeightDecayGroups groups = weight_decay_groups(vit, rule);
  EXPECT_EQ(groups.decayed.back(), "blocks.1.mlp.fc2.weight");
}

}  // namespace
}  // namespace attnlens
