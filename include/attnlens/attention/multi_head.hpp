// MultiHeadAttention<T>: torch.nn.MultiheadAttention (batch_first) with its parameter names,
// layouts and semantics (MATH.md section 1): packed or separate q/k/v projections, kdim/vdim,
// bias on or off, self- and cross-attention, typed masks, per-head or averaged weights.
// Position encodings plug in as score terms, query/key transforms and value terms.
// Heads run in parallel across batch x heads.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "attnlens/attention/fused_engine.hpp"
#include "attnlens/attention/mask.hpp"
#include "attnlens/attention/query_key_transform.hpp"
#include "attnlens/attention/reference_engine.hpp"
#include "attnlens/attention/score_term.hpp"
#include "attnlens/attention/value_term.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/layers/linear.hpp"

namespace attnlens {

struct MultiHeadAttentionOptions {
  Index embed_dim = 0;
  Index num_heads = 1;
  bool bias = true;  // in_proj_bias and out_proj.bias
  Index kdim = 0;    // key feature size; 0 means embed_dim
  Index vdim = 0;    // value feature size; 0 means embed_dim
  // false: no q.k range kernel, the scores are the score terms alone (positional-only
  // attention, Cordonnier et al.); the query projection is then unused.
  bool content = true;
};

enum class AttentionWeights {
  none,      // do not return weights
  per_head,  // B x H x L x S (PyTorch average_attn_weights=False)
  averaged,  // B x L x S, the mean over heads (PyTorch average_attn_weights=True)
};

enum class AttentionEngine {
  automatic,  // fused, unless weights are returned or cached: then reference
  fused,      // tiled online softmax, O(L * d) memory; cannot return weights
  reference,  // materializes every head's L x S weights
};

struct MultiHeadForwardOptions {
  AttentionWeights weights = AttentionWeights::none;
  ParallelOptions parallel;
  AttentionEngine engine = AttentionEngine::automatic;
  FusedTiling tiling = {};  // fused engine only
};

template <class T>
struct MultiHeadOutput {
  Tensor<T> output;   // B x L x E (L x E for an unbatched call)
  Tensor<T> weights;  // as requested by MultiHeadForwardOptions::weights; empty for none
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct MultiHeadCache {
  Matrix<T> queries;  // B*L x E, projected, after the query/key transforms
  Matrix<T> keys;     // B*S x E, projected, after the query/key transforms
  Matrix<T> values;   // B*S x E, projected
  Tensor<T> weights;  // B x H x L x S
  Matrix<T> context;  // B*L x E, concat_h(A_h V_h), before out_proj
};

template <class T>
class MultiHeadAttention {
  MultiHeadAttentionOptions options_;  // first: checked before any member is sized from it

 public:
  // Parameters of the right shapes, zero-filled: load them or call reset_parameters().
  explicit MultiHeadAttention(const MultiHeadAttentionOptions& options)
      : options_(checked(options)),
        out_proj(LinearOptions{options.embed_dim, options.embed_dim, options.bias}) {
    const Index E = options.embed_dim;
    if (packed()) {
      in_proj_weight = Matrix<T>::Zero(3 * E, E);
    } else {
      q_proj_weight = Matrix<T>::Zero(E, E);
      k_proj_weight = Matrix<T>::Zero(E, kdim());
      v_proj_weight = Matrix<T>::Zero(E, vdim());
    }
    if (options.bias) in_proj_bias = Vector<T>::Zero(3 * E);
  }

  // PyTorch's default initialisation.
  MultiHeadAttention(const MultiHeadAttentionOptions& options, Rng& rng)
      : MultiHeadAttention(options) {
    reset_parameters(rng);
  }

  // As nn.MultiheadAttention._reset_parameters: xavier-uniform projections, zero biases,
  // out_proj.weight as nn.Linear.
  void reset_parameters(Rng& rng) {
    if (packed()) {
      init::xavier_uniform(in_proj_weight, rng);
    } else {
      init::xavier_uniform(q_proj_weight, rng);
      init::xavier_uniform(k_proj_weight, rng);
      init::xavier_uniform(v_proj_weight, rng);
    }
    init::linear_uniform(out_proj.weight, embed_dim(), rng);
    in_proj_bias.setZero();
    out_proj.bias.setZero();
  }

  Index embed_dim() const { return options_.embed_dim; }
  Index num_heads() const { return options_.num_heads; }
  Index head_dim() const { return options_.embed_dim / options_.num_heads; }
  Index kdim() const { return options_.kdim ? options_.kdim : options_.embed_dim; }
  Index vdim() const { return options_.vdim ? options_.vdim : options_.embed_dim; }
  bool has_bias() const { return options_.bias; }
  // PyTorch packs q, k, v into in_proj_weight when kdim == vdim == embed_dim.
  bool packed() const { return kdim() == embed_dim() && vdim() == embed_dim(); }
  const MultiHeadAttentionOptions& options() const { return options_; }

  // Cross-attention: query B x L x E, key B x S x kdim, value B x S x vdim (or unbatched
  // L x E, S x kdim, S x vdim).
  MultiHeadOutput<T> forward(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                             const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr) const {
    const Dims dims = check_inputs(query, key, value);
    MultiHeadCache<T> local;
    MultiHeadCache<T>& state = cache ? *cache : local;
    project(query, key, value, &query == &key && &key == &value, dims, state);
    return attend(dims, mask, options, cache != nullptr, state);
  }

  // Self-attention: query = key = value = x; one GEMM projects q, k and v together.
  MultiHeadOutput<T> forward(const Tensor<T>& x, const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr) const {
    return forward(x, x, x, mask, options, cache);
  }

  // Throws ShapeError naming the parameter whose shape does not match the options (after
  // loading parameters from a file).
  void check_parameters() const {
    const Index E = embed_dim();
    if (packed()) {
      detail::require_matrix(in_proj_weight, 3 * E, E, "in_proj_weight");
    } else {
      detail::require_matrix(q_proj_weight, E, E, "q_proj_weight");
      detail::require_matrix(k_proj_weight, E, kdim(), "k_proj_weight");
      detail::require_matrix(v_proj_weight, E, vdim(), "v_proj_weight");
    }
    if (has_bias())
      detail::require_shape(in_proj_bias.size() == 3 * E, "in_proj_bias",
                            detail::concat("[", 3 * E, "]"),
                            detail::concat("[", in_proj_bias.size(), "]"));
    detail::require_matrix(out_proj.weight, E, E, "out_proj.weight");
    detail::require_shape(out_proj.bias.size() == (has_bias() ? E : 0), "out_proj.bias",
                          has_bias() ? detail::concat("[", E, "]") : "no bias",
                          detail::concat("[", out_proj.bias.size(), "]"));
  }

  // Parameters, named as in PyTorch's state_dict.
  Matrix<T> in_proj_weight;  // 3E x E when packed(), else empty
  Vector<T> in_proj_bias;    // 3E, or empty without bias
  Matrix<T> q_proj_weight;   // E x E when !packed()
  Matrix<T> k_proj_weight;   // E x kdim when !packed()
  Matrix<T> v_proj_weight;   // E x vdim when !packed()
  Linear<T> out_proj;        // E -> E

  // Domain kernels added to every head's scores after q.k / sqrt(d) (positional terms).
  ScoreTerms<T> score_terms;
  // Applied to every head's projected queries and keys before the scores (RoPE).
  QueryKeyTransforms<T> query_key_transforms;
  // Added to every head's A V (Shaw et al.'s relative values).
  ValueTerms<T> value_terms;

 private:
  struct Dims {
    bool batched;
    Index batch, tgt_len, src_len;
  };

  static MultiHeadAttentionOptions checked(const MultiHeadAttentionOptions& o) {
    detail::require_argument(o.embed_dim > 0, "MultiHeadAttentionOptions::embed_dim", "> 0",
                             o.embed_dim);
    detail::require_argument(o.num_heads > 0, "MultiHeadAttentionOptions::num_heads", "> 0",
                             o.num_heads);
    detail::require_argument(o.embed_dim % o.num_heads == 0, "MultiHeadAttentionOptions::num_heads",
                             detail::concat("a divisor of embed_dim ", o.embed_dim), o.num_heads);
    detail::require_argument(o.kdim >= 0, "MultiHeadAttentionOptions::kdim", ">= 0", o.kdim);
    detail::require_argument(o.vdim >= 0, "MultiHeadAttentionOptions::vdim", ">= 0", o.vdim);
    return o;
  }

  Dims check_inputs(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value) const {
    const Index rank = query.rank();
    detail::require_shape(rank == 2 || rank == 3, "query", "rank 3 [B, L, E] or rank 2 [L, E]",
                          detail::shape_string(query.shape()));
    const bool batched = rank == 3;
    const Index B = batched ? query.dim(0) : 1;
    const Index L = query.dim(rank - 2);
    detail::require_shape(
        query.dim(rank - 1) == embed_dim() && L > 0 && B > 0, "query",
        detail::concat(batched ? "[B, L, " : "[L, ", embed_dim(), "] with B, L >= 1"),
        detail::shape_string(query.shape()));
    const auto expect = [&](const Tensor<T>& t, const char* name, Index features) {
      const std::string expected = batched ? detail::concat("[", B, ", S, ", features, "]")
                                           : detail::concat("[S, ", features, "]");
      detail::require_shape(t.rank() == rank && (!batched || t.dim(0) == B) &&
                                t.dim(rank - 1) == features && t.dim(rank - 2) > 0,
                            name, expected + " with S >= 1", detail::shape_string(t.shape()));
    };
    expect(key, "key", kdim());
    expect(value, "value", vdim());
    const Index S = key.dim(rank - 2);
    detail::require_shape(value.dim(rank - 2) == S, "value",
                          detail::concat("S = ", S, " rows like key"),
                          detail::shape_string(value.shape()));
    return {batched, B, L, S};
  }

  // q, k, v = x W^T + b for the three projections; one GEMM when all three read the same x.
  void project(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
               bool self_attention, const Dims& dims, MultiHeadCache<T>& state) const {
    const Index E = embed_dim();
    const ConstMatrixMap<T> xq(query.data(), dims.batch * dims.tgt_len, E);
    const ConstMatrixMap<T> xk(key.data(), dims.batch * dims.src_len, kdim());
    const ConstMatrixMap<T> xv(value.data(), dims.batch * dims.src_len, vdim());
    const auto bias = [&](Index part) { return in_proj_bias.segment(part * E, E).transpose(); };
    if (self_attention && packed()) {
      Matrix<T> qkv = xq * in_proj_weight.transpose();
      if (has_bias()) qkv.rowwise() += in_proj_bias.transpose();
      state.queries = qkv.leftCols(E);
      state.keys = qkv.middleCols(E, E);
      state.values = qkv.rightCols(E);
      return;
    }
    const auto weight = [&](Index part, const Matrix<T>& separate) {
      return packed() ? ConstMatrixRef<T>(in_proj_weight.middleRows(part * E, E))
                      : ConstMatrixRef<T>(separate);
    };
    state.queries.noalias() = xq * weight(0, q_proj_weight).transpose();
    state.keys.noalias() = xk * weight(1, k_proj_weight).transpose();
    state.values.noalias() = xv * weight(2, v_proj_weight).transpose();
    if (has_bias()) {
      state.queries.rowwise() += bias(0);
      state.keys.rowwise() += bias(1);
      state.values.rowwise() += bias(2);
    }
  }

  // The kernel every head of this module uses, with the call's support.
  AttentionKernel<T> attention_kernel(const BoundMask<T>& bound) const {
    AttentionKernel<T> kernel;
    kernel.range.type = options_.content ? RangeKernelType::dot_product : RangeKernelType::none;
    kernel.range.scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    kernel.terms = &score_terms;
    kernel.mask = &bound;
    kernel.value_terms = &value_terms;
    return kernel;
  }

  MultiHeadOutput<T> attend(const Dims& dims, const AttentionMask<T>& mask,
                            const MultiHeadForwardOptions& options, bool caching,
                            MultiHeadCache<T>& state) const {
    const Index B = dims.batch, H = num_heads(), L = dims.tgt_len, S = dims.src_len;
    const Index d = head_dim(), E = embed_dim();
    const ScoreShape shape{B, H, L, S, d};
    for (const auto& term : score_terms) term->check(shape);
    for (const auto& transform : query_key_transforms) transform->check(shape);
    for (const auto& term : value_terms) term->check(shape, d);
    const BoundMask<T> bound(mask, shape);
    const AttentionKernel<T> kernel = attention_kernel(bound);
    check_kernel<T>(kernel, shape);

    const bool keep_weights = caching || options.weights != AttentionWeights::none;
    const bool fused = options.engine == AttentionEngine::fused ||
                       (options.engine == AttentionEngine::automatic && !keep_weights);
    detail::require_argument(!(fused && keep_weights), "MultiHeadForwardOptions::engine",
                             "reference or automatic when weights are returned or cached", "fused");

    // Each task owns its head's column block of q and k: transforming in place is safe.
    if (!query_key_transforms.empty())
      parallel_for(
          B * H,
          [&](Index task) {
            const Index b = task / H, h = task % H;
            apply_query_key_transforms<T>(query_key_transforms, b, h,
                                          state.queries.block(b * L, h * d, L, d),
                                          state.keys.block(b * S, h * d, S, d));
          },
          options.parallel);

    const auto head_at = [&](Index task) {
      const Index b = task / H, h = task % H;
      return HeadInputs<T>{b, h, state.queries.block(b * L, h * d, L, d),
                           state.keys.block(b * S, h * d, S, d),
                           state.values.block(b * S, h * d, S, d)};
    };
    const auto context_at = [&](Index task) {
      const Index b = task / H, h = task % H;
      return MatrixRef<T>(state.context.block(b * L, h * d, L, d));
    };
    state.context.resize(B * L, E);
    state.weights = keep_weights ? Tensor<T>({B, H, L, S}) : Tensor<T>();
    if (fused) {
      fused_attention_heads<T>(B * H, head_at, context_at, kernel,
                               FusedOptions{options.tiling, options.parallel});
    } else {
      // All B x H weight matrices are kept only when someone reads them; otherwise each task
      // uses an L x S scratch matrix of its own.
      parallel_for(
          B * H,
          [&](Index task) {
            Matrix<T> scratch(keep_weights ? 0 : L, keep_weights ? 0 : S);
            const MatrixMap<T> weights = keep_weights ? state.weights.matrix({task / H, task % H})
                                                      : MatrixMap<T>(scratch.data(), L, S);
            reference_attention<T>(head_at(task), kernel, weights, context_at(task));
          },
          options.parallel);
    }

    MultiHeadOutput<T> result;
    result.output = dims.batched ? Tensor<T>({B, L, E}) : Tensor<T>({L, E});
    MatrixMap<T> output(result.output.data(), B * L, E);
    out_proj.forward(state.context, output);

    if (options.weights == AttentionWeights::per_head) {
      result.weights = dims.batched ? state.weights : state.weights.reshaped({H, L, S});
    } else if (options.weights == AttentionWeights::averaged) {
      result.weights = dims.batched ? Tensor<T>({B, L, S}) : Tensor<T>({L, S});
      for (Index b = 0; b < B; ++b) {
        MatrixMap<T> mean(result.weights.data() + b * L * S, L, S);
        mean.setZero();
        for (Index h = 0; h < H; ++h) mean += state.weights.matrix({b, h});
        mean /= static_cast<T>(H);
      }
    }
    return result;
  }
};

}  // namespace attnlens
