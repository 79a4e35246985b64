// VisionTransformer<T>: ViT (Dosovitskiy et al. 2021) as timm builds it: patch embedding
// (a stride = kernel conv as one GEMM), optional CLS token, learned absolute positions and/or
// 2-D relative ones (docs/math.md section 3: the quadratic encoding, or Bello et al.'s learned row
// and column offsets, as score terms of every block's self-attention; the CLS token, outside the
// patch grid, gets domain term 0), a stack of TransformerEncoderLayer, final norm, pooling (CLS
// token or mean) and a linear head.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/attention/variant.hpp"
#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/encoder_layer.hpp"
#include "attnlens/blocks/position_encoding.hpp"
#include "attnlens/blocks/residual.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/layers/layer_norm.hpp"
#include "attnlens/layers/linear.hpp"
#include "attnlens/layers/patch_embedding.hpp"

namespace attnlens {

enum class VitPosition {
  none,     // no absolute positions
  learned,  // pos_embed [1, prefix + N, E] added after the CLS token is prepended (timm)
};

enum class VitPooling {
  token,  // the CLS token's output (timm global_pool="token"); needs class_token
  mean,   // the mean over the patch tokens, CLS excluded (timm global_pool="avg")
};

struct VisionTransformerOptions {
  Index image_height = 224;
  Index image_width = 224;
  Index patch_size = 16;
  Index in_chans = 3;
  Index num_classes = 1000;  // 0: no head, the pooled features are the output
  // encoder.layer.d_model is the embedding width. timm's blocks are norm_first with GELU and
  // a final norm: set those here for timm-like models. encoder.position must stay none: the
  // two options below say where a ViT's positions go. A bilateral attention variant's
  // domain kernel acts on the patch grid (leading = the CLS token), whatever its domain's
  // grid and leading hold.
  EncoderOptions encoder;
  bool class_token = true;
  VitPosition position = VitPosition::learned;  // absolute
  // none, quadratic or learned_2d, one per block; its grid is set from the image and patch
  // sizes (leading = the CLS token), whatever relative_position.grid holds.
  PositionOptions relative_position;
  VitPooling pooling = VitPooling::token;
};

template <class T>
struct VitOutput {
  Tensor<T> logits;                // B x num_classes (B x E pooled features without a head)
  Tensor<T> tokens;                // B x (prefix + N) x E, after the final norm
  std::vector<Tensor<T>> weights;  // per block, as EncoderForwardOptions::weights asks
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct VitCache {
  Tensor<T> images;  // B x C x H x W, the forward's input
  Tensor<T> pooled;  // B x E, the head's input
  EncoderCache<T> encoder;
};

template <class T>
class VisionTransformer {
  VisionTransformerOptions options_;  // first: checked before any member is sized from it

 public:
  // Parameters of the right shapes (zero, norms at identity): load them or call
  // reset_parameters().
  explicit VisionTransformer(const VisionTransformerOptions& options)
      : options_(checked(options)),
        patch_embed(PatchEmbeddingOptions{options.in_chans, options.encoder.layer.d_model,
                                          options.patch_size, true}),
        blocks(options.encoder.num_layers, TransformerEncoderLayer<T>(options_.encoder.layer)),
        residual(options.encoder.residual, options.encoder.num_layers) {
    const Index E = embed_dim();
    if (options.class_token) cls_token = Matrix<T>::Zero(1, E);
    if (options.position == VitPosition::learned) pos_embed = Matrix<T>::Zero(num_tokens(), E);
    if (options.encoder.final_norm)
      norm.emplace(LayerNormOptions{E, options.encoder.layer.layer_norm_eps});
    if (options.num_classes > 0) head = Linear<T>(LinearOptions{E, options.num_classes, true});
    if (options.relative_position.type != PositionType::none) {
      PositionOptions relative = options.relative_position;
      relative.grid = Grid2d{options.image_height / options.patch_size,
                             options.image_width / options.patch_size, num_prefix_tokens()};
      for (auto& block : blocks)
        block.set_position(RelativePosition<T>(relative, E, block.nhead()));
    }
  }

  // Each part with its PyTorch default; cls_token and pos_embed with N(0, 0.02^2) (timm
  // draws a truncated normal; the truncation at 2 sigma is omitted).
  VisionTransformer(const VisionTransformerOptions& options, Rng& rng)
      : VisionTransformer(options) {
    patch_embed.reset_parameters(rng);
    for (auto& block : blocks) block.reset_parameters(rng);
    for (Matrix<T>* m : {&cls_token, &pos_embed})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = rng.normal<T>(T(0), T(0.02));
    if (options.num_classes > 0) head.reset_parameters(rng);
  }

  const VisionTransformerOptions& options() const { return options_; }
  Index embed_dim() const { return options_.encoder.layer.d_model; }
  Index num_patches() const {
    return (options_.image_height / options_.patch_size) *
           (options_.image_width / options_.patch_size);
  }
  Index num_prefix_tokens() const { return options_.class_token ? 1 : 0; }
  Index num_tokens() const { return num_prefix_tokens() + num_patches(); }

  // images: B x in_chans x image_height x image_width. options.weights asks for each block's
  // attention maps over the tokens (CLS first).
  VitOutput<T> forward(const Tensor<T>& images, const EncoderForwardOptions& options = {},
                       VitCache<T>* cache = nullptr) const;

  // The backward pass of a forward call that filled `cache` (docs/gradients.md): dlogits =
  // dL/dlogits (B x num_classes, or B x E without a head). Returns dL/dimages; gradient's
  // parameters (a ViT like this one, e.g. zeros_like(*this)) += their gradients. With
  // `attention_gradients`: also dL/dA of every block's attention probabilities, B x H x L x L
  // each (what attention attribution integrates, interpret/attribution.hpp).
  Tensor<T> backward(const VitCache<T>& cache, const Tensor<T>& dlogits,
                     VisionTransformer& gradient, const EncoderBackwardOptions& options = {},
                     std::vector<Tensor<T>>* attention_gradients = nullptr) const;

  // Parameters, named as in timm's VisionTransformer where it has them (see for_each_parameter).
  PatchEmbedding<T> patch_embed;
  Matrix<T> cls_token;  // 1 x E (stored [1, 1, E]), or empty without a class token
  Matrix<T> pos_embed;  // (prefix + N) x E (stored [1, prefix + N, E]), or empty
  std::vector<TransformerEncoderLayer<T>> blocks;
  std::optional<LayerNorm<T>> norm;
  Linear<T> head;  // E -> num_classes, or empty without a head
  Residual<T> residual;

 private:
  static VisionTransformerOptions checked(const VisionTransformerOptions& o) {
    for (const auto& [value, name] :
         {std::pair{o.patch_size, "patch_size"}, std::pair{o.in_chans, "in_chans"},
          std::pair{o.image_height, "image_height"}, std::pair{o.image_width, "image_width"}})
      detail::require_argument(value > 0, detail::concat("VisionTransformerOptions::", name), "> 0",
                               value);
    for (const auto& [value, name] :
         {std::pair{o.image_height, "image_height"}, std::pair{o.image_width, "image_width"}})
      detail::require_argument(value % o.patch_size == 0,
                               detail::concat("VisionTransformerOptions::", name),
                               detail::concat("a multiple of patch_size ", o.patch_size), value);
    detail::require_argument(o.num_classes >= 0, "VisionTransformerOptions::num_classes", ">= 0",
                             o.num_classes);
    detail::checked(o.encoder);
    detail::require_argument(o.encoder.position.type == PositionType::none,
                             "VisionTransformerOptions::encoder.position.type",
                             "none (use position and relative_position)",
                             position_type_name(o.encoder.position.type));
    const PositionType relative = o.relative_position.type;
    detail::require_argument(relative == PositionType::none || is_two_dimensional(relative),
                             "VisionTransformerOptions::relative_position.type",
                             "none, quadratic or learned_2d", position_type_name(relative));
    detail::require_argument(o.class_token || o.pooling != VitPooling::token,
                             "VisionTransformerOptions::pooling",
                             "mean pooling without a class token", "token");
    // A bilateral variant's domain kernel acts on the patch grid, as the 2-D positions do.
    VisionTransformerOptions out = o;
    DistanceKernelOptions& domain = out.encoder.layer.attention.domain;
    domain.leading = 0;
    domain.grid =
        Grid2d{o.image_height / o.patch_size, o.image_width / o.patch_size, o.class_token ? 1 : 0};
    return out;
  }
};

template <class T>
VitOutput<T> VisionTransformer<T>::forward(const Tensor<T>& images,
                                           const EncoderForwardOptions& options,
                                           VitCache<T>* cache) const {
  const Shape expected{images.rank() == 4 ? images.dim(0) : 0, options_.in_chans,
                       options_.image_height, options_.image_width};
  detail::require_shape(images.rank() == 4 && images.shape() == expected && expected[0] > 0,
                        "images",
                        detail::concat("[B, ", options_.in_chans, ", ", options_.image_height, ", ",
                                       options_.image_width, "] with B >= 1"),
                        detail::shape_string(images.shape()));
  const Index B = images.dim(0), N = num_patches(), prefix = num_prefix_tokens();
  const Index E = embed_dim(), L = num_tokens();
  const Tensor<T> patches = patch_embed.forward(images, options.parallel);
  Tensor<T> tokens({B, L, E});
  for (Index b = 0; b < B; ++b) {
    auto x = tokens.matrix({b});
    if (prefix) x.row(0) = cls_token.row(0);
    x.bottomRows(N) = patches.matrix({b});
    if (options_.position == VitPosition::learned) x += pos_embed;
  }
  auto stack = run_encoder_stack(blocks, residual, norm, tokens, {}, options,
                                 cache ? &cache->encoder : nullptr);

  VitOutput<T> out;
  Tensor<T> pooled({B, E});
  for (Index b = 0; b < B; ++b) {
    const auto x = stack.output.matrix({b});
    pooled.matrix().row(b) = options_.pooling == VitPooling::token
                                 ? RowVector<T>(x.row(0))
                                 : RowVector<T>(x.bottomRows(N).colwise().mean());
  }
  if (cache) {
    cache->images = images;
    cache->pooled = pooled;
  }
  if (options_.num_classes > 0) {
    out.logits = Tensor<T>({B, options_.num_classes});
    head.forward(pooled.matrix(), out.logits.matrix(), options.parallel);
  } else {
    out.logits = std::move(pooled);
  }
  out.tokens = std::move(stack.output);
  out.weights = std::move(stack.weights);
  return out;
}

template <class T>
Tensor<T> VisionTransformer<T>::backward(const VitCache<T>& cache, const Tensor<T>& dlogits,
                                         VisionTransformer& gradient,
                                         const EncoderBackwardOptions& options,
                                         std::vector<Tensor<T>>* attention_gradients) const {
  const Index B = cache.pooled.rank() == 2 ? cache.pooled.dim(0) : 0;
  const Index N = num_patches(), prefix = num_prefix_tokens(), E = embed_dim(), L = num_tokens();
  detail::require_argument(B > 0, "VitCache", "the cache of a forward call", "an empty cache");
  const Index outputs = options_.num_classes > 0 ? options_.num_classes : E;
  detail::require_shape(dlogits.shape() == Shape{B, outputs}, "dlogits",
                        detail::concat("[", B, ", ", outputs, "]"),
                        detail::shape_string(dlogits.shape()));
  const Matrix<T> dpooled =
      options_.num_classes > 0
          ? head.backward(cache.pooled.matrix(), dlogits.matrix(), gradient.head, options.parallel)
          : Matrix<T>(dlogits.matrix());
  // Pooling: the CLS token's row, or the mean over the patch tokens.
  Tensor<T> dtokens({B, L, E});
  for (Index b = 0; b < B; ++b) {
    auto d = dtokens.matrix({b});
    d.setZero();
    if (options_.pooling == VitPooling::token)
      d.row(0) = dpooled.row(b);
    else
      d.bottomRows(N).rowwise() = dpooled.row(b) / static_cast<T>(N);
  }
  const Tensor<T> dx =
      encoder_stack_backward(blocks, residual, norm, cache.encoder, dtokens, gradient.blocks,
                             gradient.residual, gradient.norm, options, attention_gradients);
  Tensor<T> dpatches({B, N, E});
  for (Index b = 0; b < B; ++b) {
    const auto d = dx.matrix({b});
    if (options_.position == VitPosition::learned) gradient.pos_embed += d;
    if (prefix) gradient.cls_token.row(0) += d.row(0);
    dpatches.matrix({b}) = d.bottomRows(N);
  }
  return patch_embed.backward(cache.images, dpatches, gradient.patch_embed, options.parallel);
}

namespace detail {

// timm's name for a block parameter that TransformerEncoderLayer's walk names `name`: the
// packed in-projection is attn.qkv (the same [3E, E] matrix, q, k and v in that order), the
// out-projection attn.proj, linear1 / linear2 mlp.fc1 / mlp.fc2; norm1 and norm2 keep their
// names, and whatever attnlens attaches to self-attention (relative position tables, a
// variant's parameters) moves with it under attn.
inline std::string timm_block_name(const std::string& name) {
  static const std::pair<std::string, std::string> renames[] = {
      {"self_attn.in_proj_weight", "attn.qkv.weight"},
      {"self_attn.in_proj_bias", "attn.qkv.bias"},
      {"self_attn.out_proj.", "attn.proj."},
      {"self_attn.", "attn."},
      {"linear1.", "mlp.fc1."},
      {"linear2.", "mlp.fc2."}};
  for (const auto& [from, to] : renames)
    if (name.compare(0, from.size(), from) == 0) return to + name.substr(from.size());
  return name;
}

}  // namespace detail

// timm's VisionTransformer state_dict names: patch_embed.proj, cls_token, pos_embed,
// blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head; attnlens's
// additions under the part they belong to: a relative position's tables and a variant's
// parameters under blocks.{i}.attn. (alpha, center_shift, row_embeddings.weight, ...), a learned
// fidelity residual's fidelity_lambda at the top (docs/model-format.md).
template <class T, class F>
void for_each_parameter(VisionTransformer<T>& vit, const std::string& prefix, F&& f) {
  const Index E = vit.embed_dim();
  for_each_parameter(vit.patch_embed, prefix + "patch_embed.", f);
  if (vit.cls_token.size()) f(prefix + "cls_token", vit.cls_token, Shape{1, 1, E});
  if (vit.pos_embed.size())
    f(prefix + "pos_embed", vit.pos_embed, Shape{1, vit.pos_embed.rows(), E});
  for (std::size_t i = 0; i < vit.blocks.size(); ++i) {
    const std::string block = detail::concat(prefix, "blocks.", i, ".");
    for_each_parameter(vit.blocks[i], "",
                       [&](const std::string& name, auto& parameter, const auto&... stored) {
                         f(block + detail::timm_block_name(name), parameter, stored...);
                       });
  }
  if (vit.norm) for_each_parameter(*vit.norm, prefix + "norm.", f);
  if (vit.head.weight.size()) for_each_parameter(vit.head, prefix + "head.", f);
  for_each_parameter(vit.residual, prefix, f);
}

#ifdef ATTNLENS_COMPILED
extern template class VisionTransformer<float>;
extern template class VisionTransformer<double>;
#endif

}  // namespace attnlens
