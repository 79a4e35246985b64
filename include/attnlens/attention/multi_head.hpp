// MultiHeadAttention<T>: torch.nn.MultiheadAttention (batch_first) with its parameter names,
// layouts and semantics (docs/math.md section 1): packed or separate q/k/v projections, kdim/vdim,
// bias on or off, self- and cross-attention, typed masks, per-head or averaged weights.
// Position encodings plug in as score terms, query/key transforms and value terms; the
// attention variant chosen in the options (docs/math.md section 2) becomes a plan of further kernel
// factors for each call (attention/variant.hpp), which the module executes without knowing
// which variant it is. Heads run in parallel across batch x heads.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "attnlens/attention/plan.hpp"
#include "attnlens/attention/variant.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_backward.hpp"
#include "attnlens/kernel/attention_kernel.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/query_key_transform.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"
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
  // Which attention (docs/math.md section 2) and its settings; softmax by default.
  AttentionVariantOptions variant = {};
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
  // Copy this layer's projected values to MultiHeadOutput::values (always done for the
  // plans that read other layers' values).
  bool return_values = false;
  // An intervention on the probabilities after normalization, seen by the backward pass:
  // A_h -> head_scales[h] A_h. Empty: none; one value: every head; H values: per head (0 prunes
  // a head). Attribution scales a layer's heads together (docs/math.md section 5).
  std::vector<double> head_scales = {};
};

struct MultiHeadBackwardOptions {
  ParallelOptions parallel;
  // Fill MultiHeadInputGradients::attention with dL/dA_h (A after the intervention), B x H x
  // L x S: what attribution reads (docs/math.md section 5).
  bool attention_gradients = false;
};

// The gradients of a call's inputs; MultiHeadAttention::backward accumulates the parameters'.
template <class T>
struct MultiHeadInputGradients {
  // B*L x E, B*S x kdim, B*S x vdim: dL/d query, key, value. For self-attention (forward(x)),
  // `query` holds the whole gradient of x and key and value are empty.
  Matrix<T> query, key, value;
  // B*S x E: dL/dV^0 for a plan that reads the stack's first values (NeuTRENO); else empty.
  Matrix<T> first_values;
  Tensor<T> attention;  // B x H x L x S when MultiHeadBackwardOptions::attention_gradients
};

template <class T>
struct MultiHeadOutput {
  Tensor<T> output;   // B x L x E (L x E for an unbatched call)
  Tensor<T> weights;  // as requested by MultiHeadForwardOptions::weights; empty for none
  // B*S x E projected values of this layer (the next layers' StackValues), when
  // MultiHeadForwardOptions::return_values is set or the variant reads stack values.
  Matrix<T> values;
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct MultiHeadCache {
  Matrix<T> query_input;  // B*L x E, the call's query (and key, value: B*S x kdim, vdim)
  Matrix<T> key_input;    // empty for self-attention: the input is query_input
  Matrix<T> value_input;
  // B*L x E and B*S x E, before the query/key transforms; empty without transforms.
  Matrix<T> projected_queries;
  Matrix<T> projected_keys;
  Matrix<T> queries;      // B*L x E, projected, after the query/key transforms
  Matrix<T> keys;         // B*S x E, projected, after the query/key transforms
  Matrix<T> values;       // B*S x E, projected
  AttentionPlan<T> plan;  // the call's plan: its factors, as the call made them
  // The plan's per-key weights of each (sequence, head), index b * H + h, S entries.
  std::vector<Vector<T>> numerator_key_weights, denominator_key_weights;
  Tensor<T> weights;  // B x H x L x S
  // The boosting iterates z_0 .. z_{k-1} of every head (B*L x E each, heads as column blocks);
  // z_k is the context before the plan's context term.
  std::vector<Matrix<T>> boost_iterates;
  Matrix<T> context;   // B*L x E, concat_h(A_h V_h) (+ the plan's context term), before out_proj
  Matrix<T> smoothed;  // B*L x E, concat_h(A_h V_h) without the context term, when there is one
  // The call itself: its mask, extents, engine, intervention, and each row's log-denominator
  // (B*H*L, head-major: task h*B + b at (h*B + b)*L), from which the backward recomputes A.
  AttentionMask<T> mask;
  bool batched = true, self_attention = false, fused = false;
  Index batch = 0, tgt_len = 0, src_len = 0;
  FusedTiling tiling;
  std::vector<T> head_scales;  // H
  Vector<T> row_logsumexp;
};

template <class T>
class MultiHeadAttention : public VariantParameters<T> {
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
    reset_variant_parameters();
  }

  // PyTorch's default initialisation.
  MultiHeadAttention(const MultiHeadAttentionOptions& options, Rng& rng)
      : MultiHeadAttention(options) {
    reset_parameters(rng);
  }

  // Copies are deep: the copy's score terms, transforms and value terms are copies too (a term
  // in two lists stays one term), so a copy never shares a table with the original.
  MultiHeadAttention(const MultiHeadAttention& other)
      : VariantParameters<T>(other),
        options_(other.options_),
        in_proj_weight(other.in_proj_weight),
        in_proj_bias(other.in_proj_bias),
        q_proj_weight(other.q_proj_weight),
        k_proj_weight(other.k_proj_weight),
        v_proj_weight(other.v_proj_weight),
        out_proj(other.out_proj) {
    copy_factors(other);
  }
  MultiHeadAttention& operator=(const MultiHeadAttention& other) {
    if (this != &other) *this = MultiHeadAttention(other);
    return *this;
  }
  MultiHeadAttention(MultiHeadAttention&&) = default;
  MultiHeadAttention& operator=(MultiHeadAttention&&) = default;

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
    reset_variant_parameters();
  }

  // The variant's learned parameters at their initial values (the constructor sets them too).
  void reset_variant_parameters() {
    VariantParameters<T>::reset_variant_parameters(options_.variant, num_heads());
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
  const AttentionVariantOptions& variant() const { return options_.variant; }

  // Cross-attention: query B x L x E, key B x S x kdim, value B x S x vdim (or unbatched
  // L x E, S x kdim, S x vdim). `stack` passes other layers' values to the plans that read them.
  MultiHeadOutput<T> forward(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                             const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr,
                             const StackValues<T>& stack = {}) const;

  // Self-attention: query = key = value = x; one GEMM projects q, k and v together.
  MultiHeadOutput<T> forward(const Tensor<T>& x, const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr,
                             const StackValues<T>& stack = {}) const {
    return forward(x, x, x, mask, options, cache, stack);
  }

  // The backward pass of a forward call that filled `cache` (docs/gradients.md): doutput =
  // dL/doutput (shaped like the output); gradient's parameters (a module like this one, e.g.
  // zeros_like(*this)) += their gradients, those of the attached factors and of the variant
  // included. `stack` must be the forward's. value_gradient, when set (B*S x E), is the
  // gradient of this layer's projected values from other layers that read them (NeuTRENO's
  // V^0 in a stack's later layers), added before the in-projection.
  MultiHeadInputGradients<T> backward(const MultiHeadCache<T>& cache, const Tensor<T>& doutput,
                                      MultiHeadAttention& gradient,
                                      const MultiHeadBackwardOptions& options = {},
                                      const StackValues<T>& stack = {},
                                      const Matrix<T>* value_gradient = nullptr) const;

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
    this->check_variant_parameters(options_.variant, num_heads());
  }

  // Parameters, named as in PyTorch's state_dict; the variant's come from VariantParameters.
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
    check_variant_options(o.variant, "MultiHeadAttentionOptions::variant");
    check_variant_content(o.variant, o.content, "MultiHeadAttentionOptions::content");
    return o;
  }

  void copy_factors(const MultiHeadAttention& other) {
    detail::FactorCopies<T> copies;
    score_terms = copies.of(other.score_terms);
    query_key_transforms = copies.of(other.query_key_transforms);
    value_terms = copies.of(other.value_terms);
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
               bool self_attention, const Dims& dims, const ParallelOptions& parallel,
               MultiHeadCache<T>& state) const;

  MultiHeadOutput<T> attend(const Dims& dims, const AttentionMask<T>& mask,
                            const MultiHeadForwardOptions& options, bool caching,
                            const StackValues<T>& stack, MultiHeadCache<T>& state) const;

  // The factors of one call, the module's own first and then its plan's, and their kernel.
  struct CallKernel {
    ScoreTerms<T> terms;
    QueryKeyTransforms<T> transforms;
    AttentionKernel<T> kernel;
  };
  void assemble(const AttentionPlan<T>& plan, const ScoreShape& shape, const BoundMask<T>& mask,
                bool masked, CallKernel& call) const {
    call.terms = score_terms;
    call.terms.insert(call.terms.end(), plan.score_terms.begin(), plan.score_terms.end());
    call.transforms = query_key_transforms;
    call.transforms.insert(call.transforms.end(), plan.transforms.begin(), plan.transforms.end());
    for (const auto& term : call.terms) term->check(shape);
    for (const auto& transform : call.transforms) transform->check(shape);
    for (const auto& term : value_terms) term->check(shape, shape.head_dim);
    call.kernel.range = plan.range;
    call.kernel.terms = &call.terms;
    call.kernel.mask = masked ? &mask : nullptr;  // lets the engines take their unmasked paths
    call.kernel.value_terms = &value_terms;
    call.kernel.epsilon = plan.epsilon;
    call.kernel.boost = plan.boost;
    check_kernel<T>(call.kernel, shape);
  }

  // The intervention's scale of every head (MultiHeadForwardOptions::head_scales), checked.
  std::vector<T> head_scales(const std::vector<double>& scales) const {
    const auto H = static_cast<std::size_t>(num_heads());
    detail::require_argument(scales.empty() || scales.size() == 1 || scales.size() == H,
                             "MultiHeadForwardOptions::head_scales",
                             detail::concat("0, 1 or ", H, " (one per head) values"),
                             scales.size());
    std::vector<T> out(H, T(1));
    for (std::size_t h = 0; h < H; ++h) {
      if (scales.empty()) break;
      const double scale = scales[scales.size() == 1 ? 0 : h];
      detail::require_argument(std::isfinite(scale), "MultiHeadForwardOptions::head_scales",
                               "finite values", scale);
      out[h] = static_cast<T>(scale);
    }
    return out;
  }
};

// The heavy members are defined out of the class, so that attnlens::compiled can instantiate
// them once (src/compiled.cpp) and a program that links it does not compile them again.
template <class T>
MultiHeadOutput<T> MultiHeadAttention<T>::forward(const Tensor<T>& query, const Tensor<T>& key,
                                                  const Tensor<T>& value,
                                                  const AttentionMask<T>& mask,
                                                  const MultiHeadForwardOptions& options,
                                                  MultiHeadCache<T>* cache,
                                                  const StackValues<T>& stack) const {
  const Dims dims = check_inputs(query, key, value);
  MultiHeadCache<T> local;
  MultiHeadCache<T>& state = cache ? *cache : local;
  const bool self_attention = &query == &key && &key == &value;
  if (cache) {
    // Self-attention keeps its one input once, as query_input.
    state.query_input = ConstMatrixMap<T>(query.data(), dims.batch * dims.tgt_len, embed_dim());
    state.key_input.resize(0, 0);
    state.value_input.resize(0, 0);
    if (!self_attention) {
      state.key_input = ConstMatrixMap<T>(key.data(), dims.batch * dims.src_len, kdim());
      state.value_input = ConstMatrixMap<T>(value.data(), dims.batch * dims.src_len, vdim());
    }
    state.mask = mask;
    state.batched = dims.batched;
    state.self_attention = self_attention;
    state.batch = dims.batch;
    state.tgt_len = dims.tgt_len;
    state.src_len = dims.src_len;
  }
  project(query, key, value, self_attention, dims, options.parallel, state);
  return attend(dims, mask, options, cache != nullptr, stack, state);
}

template <class T>
void MultiHeadAttention<T>::project(const Tensor<T>& query, const Tensor<T>& key,
                                    const Tensor<T>& value, bool self_attention, const Dims& dims,
                                    const ParallelOptions& parallel,
                                    MultiHeadCache<T>& state) const {
  const Index E = embed_dim();
  const ConstMatrixMap<T> xq(query.data(), dims.batch * dims.tgt_len, E);
  const ConstMatrixMap<T> xk(key.data(), dims.batch * dims.src_len, kdim());
  const ConstMatrixMap<T> xv(value.data(), dims.batch * dims.src_len, vdim());
  const T* const bias = has_bias() ? in_proj_bias.data() : nullptr;
  if (self_attention && packed()) {
    parallel_product_transposed_split3<T>(xq, in_proj_weight, bias, state.queries, state.keys,
                                          state.values, parallel);
    return;
  }
  const auto weight = [&](Index part, const Matrix<T>& separate) {
    return packed() ? ConstMatrixRef<T>(in_proj_weight.middleRows(part * E, E))
                    : ConstMatrixRef<T>(separate);
  };
  state.queries.resize(xq.rows(), E);
  state.keys.resize(xk.rows(), E);
  state.values.resize(xv.rows(), E);
  parallel_product_transposed<T>(xq, weight(0, q_proj_weight), state.queries, parallel);
  parallel_product_transposed<T>(xk, weight(1, k_proj_weight), state.keys, parallel);
  parallel_product_transposed<T>(xv, weight(2, v_proj_weight), state.values, parallel);
  if (has_bias()) {
    const auto part = [&](Index p) { return in_proj_bias.segment(p * E, E).transpose(); };
    state.queries.rowwise() += part(0);
    state.keys.rowwise() += part(1);
    state.values.rowwise() += part(2);
  }
}

template <class T>
MultiHeadOutput<T> MultiHeadAttention<T>::attend(const Dims& dims, const AttentionMask<T>& mask,
                                                 const MultiHeadForwardOptions& options,
                                                 bool caching, const StackValues<T>& stack,
                                                 MultiHeadCache<T>& state) const {
  const Index B = dims.batch, H = num_heads(), L = dims.tgt_len, S = dims.src_len;
  const Index d = head_dim(), E = embed_dim();
  const ScoreShape shape{B, H, L, S, d};
  const auto check_stack = [&](const Matrix<T>* values, const char* what) {
    if (values) detail::require_matrix(*values, B * S, E, what);
  };
  check_stack(stack.first, "StackValues::first (B*S x E)");
  check_stack(stack.previous, "StackValues::previous (B*S x E)");

  // The mask is bound (its shapes checked) before a plan reads its key padding.
  const BoundMask<T> bound(mask, shape);
  // The module's own factors first, then the plan's.
  state.plan = attention_plan<T>(variant(), *this, options_.content,
                                 PlanContext<T>{shape, mask, stack, state.values});
  const AttentionPlan<T>& plan = state.plan;
  CallKernel call;
  assemble(plan, shape, bound, !mask.empty(), call);
  const AttentionKernel<T>& kernel = call.kernel;
  const QueryKeyTransforms<T>& transforms = call.transforms;
  const std::vector<T> scales = head_scales(options.head_scales);

  // A cache keeps the weights (for maps) on the reference engine; the fused engine caches only
  // each row's log-sum-exp, which is all the backward pass needs.
  const bool fused = options.engine == AttentionEngine::fused ||
                     (options.engine == AttentionEngine::automatic && !caching &&
                      options.weights == AttentionWeights::none);
  const bool keep_weights = options.weights != AttentionWeights::none || (caching && !fused);
  detail::require_argument(!(fused && options.weights != AttentionWeights::none),
                           "MultiHeadForwardOptions::engine",
                           "reference or automatic when weights are returned", "fused");
  if (caching) {
    state.fused = fused;
    state.tiling = options.tiling;
    state.head_scales = scales;
    state.row_logsumexp.resize(B * H * L);
  }

  // The transforms' backward needs their input (only they do).
  state.projected_queries.resize(0, 0);
  state.projected_keys.resize(0, 0);
  if (caching && !transforms.empty()) {
    state.projected_queries = state.queries;
    state.projected_keys = state.keys;
  }
  // Each task owns its head's column block of q and k: transforming in place is safe.
  if (!transforms.empty())
    parallel_for(
        B * H,
        [&](Index task) {
          const Index b = task / H, h = task % H;
          apply_query_key_transforms<T>(transforms, b, h, state.queries.block(b * L, h * d, L, d),
                                        state.keys.block(b * S, h * d, S, d));
        },
        options.parallel);

  // Per-key weights of every (sequence, head), from its transformed keys and its values.
  std::vector<Vector<T>>& numerator = state.numerator_key_weights;
  std::vector<Vector<T>>& denominator = state.denominator_key_weights;
  numerator.assign(plan.key_weighting ? static_cast<std::size_t>(B * H) : 0, Vector<T>());
  denominator.assign(numerator.size(), Vector<T>());
  if (plan.key_weighting) {
    // Which keys of each sequence are real tokens: the same for all of its heads.
    std::vector<std::vector<char>> real(static_cast<std::size_t>(B),
                                        std::vector<char>(static_cast<std::size_t>(S)));
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < S; ++j)
        real[static_cast<std::size_t>(b)][static_cast<std::size_t>(j)] = mask.keeps_key(b, j);
    parallel_for(
        B * H,
        [&](Index task) {
          const Index b = task / H, h = task % H;
          plan.key_weighting->weights(
              state.keys.block(b * S, h * d, S, d), state.values.block(b * S, h * d, S, d),
              real[static_cast<std::size_t>(b)], numerator[static_cast<std::size_t>(task)],
              denominator[static_cast<std::size_t>(task)]);
        },
        options.parallel);
  }

  // Attention tasks go head-major, so a contiguous block of them is a block of heads: the
  // columns of q, k and v the same thread projected (avx512::product_transposed).
  const auto head_at = [&](Index task) {
    const Index b = task % B, h = task / B;
    HeadInputs<T> head{b, h, state.queries.block(b * L, h * d, L, d),
                       state.keys.block(b * S, h * d, S, d),
                       state.values.block(b * S, h * d, S, d)};
    head.scale = scales[static_cast<std::size_t>(h)];
    if (!numerator.empty()) {
      const auto sequence_head = static_cast<std::size_t>(b * H + h);
      head.numerator_key_weights = numerator[sequence_head].data();
      head.denominator_key_weights = denominator[sequence_head].data();
    }
    return head;
  };
  const auto context_at = [&](Index task) {
    const Index b = task % B, h = task / B;
    return MatrixRef<T>(state.context.block(b * L, h * d, L, d));
  };
  state.context.resize(B * L, E);
  state.weights = keep_weights ? Tensor<T>({B, H, L, S}) : Tensor<T>();
  state.boost_iterates.assign(caching ? static_cast<std::size_t>(plan.boost) : 0,
                              Matrix<T>(B * L, E));
  const auto logsumexp_at = [&](Index task) -> T* {
    return caching ? state.row_logsumexp.data() + task * L : nullptr;
  };
  const auto record = [&](Index step, Index task, const auto& z) {
    if (caching)
      state.boost_iterates[static_cast<std::size_t>(step)].block((task % B) * L, (task / B) * d, L,
                                                                 d) = z;
  };
  if (fused) {
    fused_attention_heads<T>(B * H, head_at, context_at, logsumexp_at, kernel,
                             FusedOptions{options.tiling, options.parallel}, record);
  } else {
    // All B x H weight matrices are kept only when someone reads them; otherwise each task
    // uses an L x S scratch matrix of its own.
    parallel_for(
        B * H,
        [&](Index task) {
          Matrix<T> scratch(keep_weights ? 0 : L, keep_weights ? 0 : S);
          const MatrixMap<T> weights = keep_weights ? state.weights.matrix({task % B, task / B})
                                                    : MatrixMap<T>(scratch.data(), L, S);
          std::vector<Matrix<T>> iterates;
          reference_attention<T>(head_at(task), kernel, weights, context_at(task),
                                 caching ? &iterates : nullptr, logsumexp_at(task));
          for (std::size_t m = 0; m < iterates.size(); ++m)
            record(static_cast<Index>(m), task, iterates[m]);
        },
        options.parallel);
  }
  if (plan.context_term) {
    if (caching) state.smoothed = state.context;
    plan.context_term->add(state.values, stack, state.context);
  }

  MultiHeadOutput<T> result;
  if (options.return_values || plan.reads_stack_values) result.values = state.values;
  result.output = dims.batched ? Tensor<T>({B, L, E}) : Tensor<T>({L, E});
  MatrixMap<T> output(result.output.data(), B * L, E);
  out_proj.check_parameters("out_proj");
  parallel_product_transposed<T>(state.context, out_proj.weight, output, options.parallel,
                                 out_proj.has_bias() ? out_proj.bias.data() : nullptr);

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

template <class T>
MultiHeadInputGradients<T> MultiHeadAttention<T>::backward(const MultiHeadCache<T>& cache,
                                                           const Tensor<T>& doutput,
                                                           MultiHeadAttention& gradient,
                                                           const MultiHeadBackwardOptions& options,
                                                           const StackValues<T>& stack,
                                                           const Matrix<T>* value_gradient) const {
  const Index B = cache.batch, H = num_heads(), L = cache.tgt_len, S = cache.src_len;
  const Index d = head_dim(), E = embed_dim();
  detail::require_argument(
      B > 0 && cache.queries.rows() == B * L && cache.row_logsumexp.size() == B * H * L,
      "MultiHeadCache", "the cache of a forward call of this module", "an empty or foreign cache");
  const Shape out_shape = cache.batched ? Shape{B, L, E} : Shape{L, E};
  detail::require_shape(doutput.shape() == out_shape, "doutput", detail::shape_string(out_shape),
                        detail::shape_string(doutput.shape()));
  detail::require_argument(
      gradient.embed_dim() == E && gradient.num_heads() == H && gradient.kdim() == kdim() &&
          gradient.vdim() == vdim() && gradient.has_bias() == has_bias() &&
          gradient.score_terms.size() == score_terms.size() &&
          gradient.query_key_transforms.size() == query_key_transforms.size() &&
          gradient.value_terms.size() == value_terms.size(),
      "MultiHeadAttention::backward gradient", "a module like this one (zeros_like)",
      "a module of other options or factors");
  const ParallelOptions& parallel = options.parallel;
  const ConstMatrixMap<T> dy(doutput.data(), B * L, E);

  // out_proj: output = context W_o^T + b_o.
  Matrix<T> dcontext(B * L, E);
  parallel_product<T>(dy, out_proj.weight, dcontext, parallel);
  parallel_add_transposed_product<T>(dy, cache.context, gradient.out_proj.weight, parallel);
  if (has_bias()) gradient.out_proj.bias += dy.colwise().sum().transpose();

  MultiHeadInputGradients<T> result;
  const AttentionPlan<T>& plan = cache.plan;
  // dq, dk, dv side by side: with one input for the three, one GEMM each way takes them.
  const bool one_input = cache.self_attention && packed();
  Matrix<T> dprojections(B * L, one_input ? 3 * E : E);
  Matrix<T> separate_dkeys(one_input ? 0 : B * S, E), separate_dvalues(one_input ? 0 : B * S, E);
  MatrixRef<T> dqueries = dprojections.leftCols(E);
  MatrixRef<T> dkeys =
      one_input ? MatrixRef<T>(dprojections.middleCols(E, E)) : MatrixRef<T>(separate_dkeys);
  MatrixRef<T> dvalues =
      one_input ? MatrixRef<T>(dprojections.rightCols(E)) : MatrixRef<T>(separate_dvalues);
  Matrix<T> dvalues_of_term;  // the context term's share of dV
  if (plan.context_term) {
    dvalues_of_term = Matrix<T>::Zero(B * S, E);
    result.first_values = Matrix<T>::Zero(stack.first ? B * S : 0, stack.first ? E : 0);
    plan.context_term->add_backward(dcontext, stack, dvalues_of_term, result.first_values);
  }

  const ScoreShape shape{B, H, L, S, d};
  const BoundMask<T> bound(cache.mask, shape);
  CallKernel call;
  assemble(plan, shape, bound, !cache.mask.empty(), call);
  // The module's factors accumulate into gradient's; the plan's into copies of their own, which
  // add_variant_gradients carries back to the variant's parameters.
  KernelGradients<T> factor_gradients;
  std::vector<std::shared_ptr<KernelFactor<T>>> plan_term_gradients;
  for (const auto& term : gradient.score_terms) factor_gradients.terms.push_back(term.get());
  for (const auto& term : plan.score_terms) {
    plan_term_gradients.push_back(detail::zeroed_copy<T>(*term));
    factor_gradients.terms.push_back(plan_term_gradients.back().get());
  }
  for (const auto& term : gradient.value_terms) factor_gradients.value_terms.push_back(term.get());

  const bool weighted = plan.key_weighting != nullptr;
  std::vector<Vector<T>> dnumerator(weighted ? static_cast<std::size_t>(B * H) : 0, Vector<T>(S));
  std::vector<Vector<T>> ddenominator(dnumerator);
  if (options.attention_gradients) result.attention = Tensor<T>({B, H, L, S});
  const Matrix<T>& smoothed = plan.context_term ? cache.smoothed : cache.context;
  const auto head_at = [&](Index task) {
    const Index b = task % B, h = task / B;
    HeadInputs<T> head{b, h, cache.queries.block(b * L, h * d, L, d),
                       cache.keys.block(b * S, h * d, S, d),
                       cache.values.block(b * S, h * d, S, d)};
    if (weighted) {
      const auto sequence_head = static_cast<std::size_t>(b * H + h);
      head.numerator_key_weights = cache.numerator_key_weights[sequence_head].data();
      head.denominator_key_weights = cache.denominator_key_weights[sequence_head].data();
    }
    head.scale = cache.head_scales[static_cast<std::size_t>(h)];
    return head;
  };
  const auto backward_at = [&](Index task) {
    const Index b = task % B, h = task / B;
    const auto columns = [&](const Matrix<T>& m, Index rows) {
      return ConstMatrixRef<T>(m.block(b * rows, h * d, rows, d));
    };
    HeadBackward<T> data{cache.row_logsumexp.data() + task * L,
                         columns(smoothed, L),
                         {},
                         columns(dcontext, L),
                         dqueries.block(b * L, h * d, L, d),
                         dkeys.block(b * S, h * d, S, d),
                         dvalues.block(b * S, h * d, S, d)};
    for (const Matrix<T>& z : cache.boost_iterates) data.iterates.push_back(columns(z, L));
    if (weighted) {
      data.dnumerator_weights = dnumerator[static_cast<std::size_t>(b * H + h)].data();
      data.ddenominator_weights = ddenominator[static_cast<std::size_t>(b * H + h)].data();
    }
    if (options.attention_gradients) data.dprobabilities = result.attention.matrix({b, h}).data();
    return data;
  };
  const FusedTiling tiling = cache.fused ? cache.tiling : FusedTiling{L, S};
  attention_heads_backward<T>(B * H, head_at, backward_at, call.kernel,
                              FusedOptions{tiling, parallel}, factor_gradients);
  add_variant_gradients<T>(variant(), *this, plan_term_gradients, factor_gradients.frequency,
                           gradient);

  // Back through the key weights, then the query/key transforms, to the projections.
  std::vector<std::vector<char>> real(weighted ? static_cast<std::size_t>(B) : 0,
                                      std::vector<char>(static_cast<std::size_t>(S)));
  for (Index b = 0; b < static_cast<Index>(real.size()); ++b)
    for (Index j = 0; j < S; ++j)
      real[static_cast<std::size_t>(b)][static_cast<std::size_t>(j)] = cache.mask.keeps_key(b, j);
  std::vector<KernelFactor<T>*> transform_gradients;
  for (const auto& transform : gradient.query_key_transforms)
    transform_gradients.push_back(transform.get());
  transform_gradients.resize(call.transforms.size(), nullptr);  // the plan's have no parameters
  parallel_for(
      B * H,
      [&](Index task) {
        const Index b = task / H, h = task % H;
        if (weighted)
          plan.key_weighting->weights_backward(
              cache.keys.block(b * S, h * d, S, d), cache.values.block(b * S, h * d, S, d),
              real[static_cast<std::size_t>(b)], dnumerator[static_cast<std::size_t>(task)],
              ddenominator[static_cast<std::size_t>(task)], dkeys.block(b * S, h * d, S, d),
              dvalues.block(b * S, h * d, S, d));
        if (!call.transforms.empty())
          apply_query_key_transforms_backward<T>(
              call.transforms, b, h, cache.projected_queries.block(b * L, h * d, L, d),
              cache.projected_keys.block(b * S, h * d, S, d), dqueries.block(b * L, h * d, L, d),
              dkeys.block(b * S, h * d, S, d), transform_gradients);
      },
      parallel);
  if (plan.context_term) dvalues += dvalues_of_term;
  if (value_gradient) {
    detail::require_matrix(*value_gradient, B * S, E, "value_gradient (B*S x E)");
    dvalues += *value_gradient;
  }

  // The in-projection, q, k, v = x W^T + b: one GEMM each way when q, k and v come from one x.
  if (has_bias()) {
    gradient.in_proj_bias.segment(0, E) += dqueries.colwise().sum().transpose();
    gradient.in_proj_bias.segment(E, E) += dkeys.colwise().sum().transpose();
    gradient.in_proj_bias.segment(2 * E, E) += dvalues.colwise().sum().transpose();
  }
  if (one_input) {
    parallel_add_transposed_product<T>(dprojections, cache.query_input, gradient.in_proj_weight,
                                       parallel);
    result.query.resize(B * L, E);
    parallel_product<T>(dprojections, in_proj_weight, result.query, parallel);
    return result;
  }
  const auto part = [&](Index p, ConstMatrixRef<T> dprojection, const Matrix<T>& input,
                        const Matrix<T>& separate, Matrix<T>& separate_gradient,
                        Matrix<T>& dinput) {
    const ConstMatrixRef<T> weight = packed()
                                         ? ConstMatrixRef<T>(in_proj_weight.middleRows(p * E, E))
                                         : ConstMatrixRef<T>(separate);
    MatrixRef<T> weight_gradient = packed()
                                       ? MatrixRef<T>(gradient.in_proj_weight.middleRows(p * E, E))
                                       : MatrixRef<T>(separate_gradient);
    parallel_add_transposed_product<T>(dprojection, input, weight_gradient, parallel);
    dinput.resize(input.rows(), input.cols());
    parallel_product<T>(dprojection, weight, dinput, parallel);
  };
  part(0, dqueries, cache.query_input, q_proj_weight, gradient.q_proj_weight, result.query);
  part(1, dkeys, cache.key_input, k_proj_weight, gradient.k_proj_weight, result.key);
  part(2, dvalues, cache.value_input, v_proj_weight, gradient.v_proj_weight, result.value);
  return result;
}

// The parameters in nn.MultiheadAttention's state_dict order, then the variant's and those of
// the attached score terms, transforms and value terms (each once, by their own names under the
// same prefix).
template <class T, class F>
void for_each_parameter(MultiHeadAttention<T>& mha, const std::string& prefix, F&& f) {
  if (mha.packed()) {
    f(prefix + "in_proj_weight", mha.in_proj_weight);
  } else {
    f(prefix + "q_proj_weight", mha.q_proj_weight);
    f(prefix + "k_proj_weight", mha.k_proj_weight);
    f(prefix + "v_proj_weight", mha.v_proj_weight);
  }
  if (mha.has_bias()) f(prefix + "in_proj_bias", mha.in_proj_bias);
  for_each_parameter(mha.out_proj, prefix + "out_proj.", f);
  detail::ParameterCallback<T, std::remove_reference_t<F>> visit(f);
  mha.visit_variant_parameters(prefix, visit);
  detail::visit_factor_parameters<T>(prefix, visit, mha.score_terms, mha.query_key_transforms,
                                     mha.value_terms);
}

#ifdef ATTNLENS_COMPILED
extern template class MultiHeadAttention<float>;
extern template class MultiHeadAttention<double>;
#endif

}  // namespace attnlens
