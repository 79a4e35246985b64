// MultiHeadAttention<T>: torch.nn.MultiheadAttention (batch_first) with its parameter names,
// layouts and semantics (MATH.md section 1): packed or separate q/k/v projections, kdim/vdim,
// bias on or off, self- and cross-attention, typed masks, per-head or averaged weights.
// Position encodings plug in as score terms, query/key transforms and value terms; the
// attention variants of MATH.md section 2 (bilateral, KDE, robust KDE, FourierFormer,
// elliptical, NeuTRENO, boosting) are chosen in the options and map to kernel factors.
// Heads run in parallel across batch x heads.
#pragma once

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "attnlens/position/distance_kernel.hpp"
#include "attnlens/attention/elliptical.hpp"
#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/attention/kde.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/query_key_transform.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"
#include "attnlens/attention/variant.hpp"
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
  // Which attention (MATH.md section 2) and its settings; softmax by default.
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
  // variants that read other layers' values, NeuTRENO and elliptical).
  bool return_values = false;
};

// Projected values of other layers of a stack, for the variants that read them (B*S x E each,
// one token per row, as MultiHeadOutput::values). Null means "this is the stack's first layer":
// NeuTRENO then adds no term and elliptical uses the metric m = 1.
template <class T>
struct StackValues {
  const Matrix<T>* first = nullptr;     // V^0, the first layer's values (NeuTRENO)
  const Matrix<T>* previous = nullptr;  // V^{l-1}, the previous layer's values (elliptical)
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
    reset_variant_parameters();
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
    reset_variant_parameters();
  }

  // The variant's learned parameters at their initial values (the constructor sets them too):
  // rho_h with softplus(rho_h) = sigma_init (bilateral), R = 1 (fourier).
  void reset_variant_parameters() {
    const auto& v = options_.variant;
    rho = v.type == AttentionVariantType::bilateral
              ? Vector<T>::Constant(num_heads(), inverse_softplus(static_cast<T>(v.sigma_init)))
              : Vector<T>();
    fourier_r = v.type == AttentionVariantType::fourier ? Vector<T>::Ones(1) : Vector<T>();
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
  // sigma_h = softplus(rho_h) of the bilateral variant.
  Vector<T> bilateral_sigma() const {
    return rho.unaryExpr([](T x) { return softplus(x); });
  }

  // Cross-attention: query B x L x E, key B x S x kdim, value B x S x vdim (or unbatched
  // L x E, S x kdim, S x vdim). `stack` passes other layers' values to NeuTRENO / elliptical.
  MultiHeadOutput<T> forward(const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
                             const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr,
                             const StackValues<T>& stack = {}) const {
    const Dims dims = check_inputs(query, key, value);
    MultiHeadCache<T> local;
    MultiHeadCache<T>& state = cache ? *cache : local;
    project(query, key, value, &query == &key && &key == &value, dims, options.parallel, state);
    return attend(dims, mask, options, cache != nullptr, stack, state);
  }

  // Self-attention: query = key = value = x; one GEMM projects q, k and v together.
  MultiHeadOutput<T> forward(const Tensor<T>& x, const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {},
                             MultiHeadCache<T>* cache = nullptr,
                             const StackValues<T>& stack = {}) const {
    return forward(x, x, x, mask, options, cache, stack);
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
    const auto type = options_.variant.type;
    const Index rho_size = type == AttentionVariantType::bilateral ? num_heads() : 0;
    detail::require_shape(rho.size() == rho_size, "rho",
                          rho_size ? detail::concat("[", rho_size, "] (one per head)")
                                   : "[0] (the variant is not bilateral)",
                          detail::concat("[", rho.size(), "]"));
    detail::require_argument(rho.allFinite(), "rho", "finite values", rho.transpose());
    const Index r_size = type == AttentionVariantType::fourier ? 1 : 0;
    detail::require_shape(fourier_r.size() == r_size, "fourier_r",
                          r_size ? "[1]" : "[0] (the variant is not fourier)",
                          detail::concat("[", fourier_r.size(), "]"));
    detail::require_argument(fourier_r.allFinite(), "fourier_r", "a finite value",
                             fourier_r.transpose());
  }

  // Parameters, named as in PyTorch's state_dict.
  Matrix<T> in_proj_weight;  // 3E x E when packed(), else empty
  Vector<T> in_proj_bias;    // 3E, or empty without bias
  Matrix<T> q_proj_weight;   // E x E when !packed()
  Matrix<T> k_proj_weight;   // E x kdim when !packed()
  Matrix<T> v_proj_weight;   // E x vdim when !packed()
  Linear<T> out_proj;        // E -> E
  // Learned parameters of the variants (empty for the others):
  Vector<T> rho;        // bilateral: H entries, sigma_h = softplus(rho_h)
  Vector<T> fourier_r;  // fourier: [R], the frequency of sinc(R (q_c - k_c)), init 1

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
    detail::require_argument(o.content || !needs_content(o.variant.type),
                             "MultiHeadAttentionOptions::content",
                             detail::concat("true for the ", attention_variant_name(o.variant.type),
                                            " variant (it has a query-key range kernel)"),
                             "false");
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
               bool self_attention, const Dims& dims, const ParallelOptions& parallel,
               MultiHeadCache<T>& state) const {
    const Index E = embed_dim();
    const ConstMatrixMap<T> xq(query.data(), dims.batch * dims.tgt_len, E);
    const ConstMatrixMap<T> xk(key.data(), dims.batch * dims.src_len, kdim());
    const ConstMatrixMap<T> xv(value.data(), dims.batch * dims.src_len, vdim());
    const auto bias = [&](Index part) { return in_proj_bias.segment(part * E, E).transpose(); };
    if (self_attention && packed()) {
#if ATTNLENS_HAS_AVX512_KERNELS
      if constexpr (std::is_same_v<T, float>) {
        if (detail::use_avx512()) {
          // One GEMM whose column tiles land in q, k and v directly, the bias added on the way.
          state.queries.resize(xq.rows(), E);
          state.keys.resize(xq.rows(), E);
          state.values.resize(xq.rows(), E);
          detail::avx512::Destination qkv{
              nullptr, E, E, {state.queries.data(), state.keys.data(), state.values.data()}};
          detail::avx512::product_transposed(xq.data(), E, in_proj_weight.data(), E,
                                             has_bias() ? in_proj_bias.data() : nullptr, xq.rows(),
                                             3 * E, E, qkv, parallel);
          return;
        }
      }
#endif
      Matrix<T> qkv(xq.rows(), 3 * E);
      parallel_product_transposed<T>(xq, in_proj_weight, qkv, parallel);
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
    state.queries.resize(xq.rows(), E);
    state.keys.resize(xk.rows(), E);
    state.values.resize(xv.rows(), E);
    parallel_product_transposed<T>(xq, weight(0, q_proj_weight), state.queries, parallel);
    parallel_product_transposed<T>(xk, weight(1, k_proj_weight), state.keys, parallel);
    parallel_product_transposed<T>(xv, weight(2, v_proj_weight), state.values, parallel);
    if (has_bias()) {
      state.queries.rowwise() += bias(0);
      state.keys.rowwise() += bias(1);
      state.values.rowwise() += bias(2);
    }
  }

  // The score terms and query/key transforms of a call: the module's own, then the variant's.
  struct VariantFactors {
    ScoreTerms<T> terms;
    QueryKeyTransforms<T> transforms;
  };

  VariantFactors variant_factors(const Dims& dims, const AttentionMask<T>& mask,
                                 const StackValues<T>& stack,
                                 const MultiHeadCache<T>& state) const {
    const AttentionVariantOptions& v = variant();
    VariantFactors factors{score_terms, query_key_transforms};
    const auto check_stack = [&](const Matrix<T>* values, const char* what) {
      if (values) detail::require_matrix(*values, dims.batch * dims.src_len, embed_dim(), what);
    };
    check_stack(stack.first, "StackValues::first (B*S x E)");
    check_stack(stack.previous, "StackValues::previous (B*S x E)");
    switch (v.type) {
      case AttentionVariantType::bilateral:
        factors.terms.push_back(std::make_shared<DistanceKernel<T>>(v.domain, bilateral_sigma()));
        break;
      case AttentionVariantType::kde:
      case AttentionVariantType::robust_kde:
        factors.transforms.push_back(std::make_shared<KeyNormalization<T>>());
        break;
      case AttentionVariantType::elliptical:
        if (stack.previous)
          factors.transforms.push_back(std::make_shared<QueryMetric<T>>(
              elliptical_metric<T>(state.values, *stack.previous, dims.batch, num_heads(),
                                   static_cast<T>(v.elliptical_delta),
                                   [&](Index b, Index n) { return is_real_key(mask, b, n); }),
              num_heads()));
        break;
      case AttentionVariantType::neutreno:
        // V^0 - V lives on the keys and is added to the queries' outputs.
        if (stack.first)
          detail::require_shape(dims.src_len == dims.tgt_len, "keys of NeuTRENO attention",
                                detail::concat(dims.tgt_len, " (as many as queries)"),
                                detail::concat(dims.src_len));
        break;
      default:
        break;
    }
    return factors;
  }

  // Whether key j of sequence b survives the mask's key padding (key_keep, key_lengths); the
  // mask's shapes were checked when it was bound.
  static bool is_real_key(const AttentionMask<T>& mask, Index b, Index j) {
    if (mask.key_lengths && j >= (*mask.key_lengths)[static_cast<std::size_t>(b)]) return false;
    if (mask.key_keep) {
      const Tensor<std::uint8_t>& keep = *mask.key_keep;
      return keep.data()[keep.rank() == 1 ? j : b * keep.dim(1) + j] != 0;
    }
    return true;
  }

  // The kernel every head of this module uses, with the call's support and score terms.
  AttentionKernel<T> attention_kernel(const BoundMask<T>& bound, const ScoreTerms<T>& terms) const {
    const AttentionVariantOptions& v = variant();
    AttentionKernel<T> kernel;
    kernel.range.type = options_.content ? RangeKernelType::dot_product : RangeKernelType::none;
    kernel.range.scale = T(1) / std::sqrt(static_cast<T>(head_dim()));
    if (v.type == AttentionVariantType::kde || v.type == AttentionVariantType::robust_kde) {
      kernel.range.type = RangeKernelType::negative_squared_distance;  // -|q - k|^2 / sqrt(d)
    } else if (v.type == AttentionVariantType::fourier) {
      detail::require_shape(fourier_r.size() == 1, "fourier_r", "[1]",
                            detail::concat("[", fourier_r.size(), "]"));
      kernel.range.type = RangeKernelType::sinc4;
      kernel.range.frequency = fourier_r[0];
      kernel.epsilon = static_cast<T>(v.fourier_epsilon);
    }
    kernel.terms = &terms;
    kernel.mask = &bound;
    kernel.value_terms = &value_terms;
    kernel.boost = v.boost;
    return kernel;
  }

  MultiHeadOutput<T> attend(const Dims& dims, const AttentionMask<T>& mask,
                            const MultiHeadForwardOptions& options, bool caching,
                            const StackValues<T>& stack, MultiHeadCache<T>& state) const {
    const Index B = dims.batch, H = num_heads(), L = dims.tgt_len, S = dims.src_len;
    const Index d = head_dim(), E = embed_dim();
    const ScoreShape shape{B, H, L, S, d};
    const VariantFactors factors = variant_factors(dims, mask, stack, state);
    for (const auto& term : factors.terms) term->check(shape);
    for (const auto& transform : factors.transforms) transform->check(shape);
    for (const auto& term : value_terms) term->check(shape, d);
    const BoundMask<T> bound(mask, shape);
    AttentionKernel<T> kernel = attention_kernel(bound, factors.terms);
    if (mask.empty()) kernel.mask = nullptr;  // lets the engines take their unmasked paths
    check_kernel<T>(kernel, shape);

    const bool keep_weights = caching || options.weights != AttentionWeights::none;
    const bool fused = options.engine == AttentionEngine::fused ||
                       (options.engine == AttentionEngine::automatic && !keep_weights);
    detail::require_argument(!(fused && keep_weights), "MultiHeadForwardOptions::engine",
                             "reference or automatic when weights are returned or cached", "fused");

    // Each task owns its head's column block of q and k: transforming in place is safe.
    if (!factors.transforms.empty())
      parallel_for(
          B * H,
          [&](Index task) {
            const Index b = task / H, h = task % H;
            apply_query_key_transforms<T>(factors.transforms, b, h,
                                          state.queries.block(b * L, h * d, L, d),
                                          state.keys.block(b * S, h * d, S, d));
          },
          options.parallel);

    // Robust KDE: Huber weights per (sequence, head) from the unit keys and [k; v] of the
    // sequence's real keys; padded keys (key_keep, key_lengths) get weight 0 and never enter the
    // estimate of the mean.
    std::vector<Vector<T>> key_weights, key_value_weights;
    if (variant().type == AttentionVariantType::robust_kde) {
      key_weights.resize(static_cast<std::size_t>(B * H));
      key_value_weights.resize(static_cast<std::size_t>(B * H));
      parallel_for(
          B * H,
          [&](Index task) {
            const Index b = task / H, h = task % H;
            const auto t = static_cast<std::size_t>(task);
            std::vector<Index> kept;
            for (Index j = 0; j < S; ++j)
              if (is_real_key(mask, b, j)) kept.push_back(j);
            const auto n = static_cast<Index>(kept.size());
            Matrix<T> keys(n, d), values(n, d);
            for (Index r = 0; r < n; ++r) {
              keys.row(r) =
                  state.keys.block(b * S + kept[static_cast<std::size_t>(r)], h * d, 1, d);
              values.row(r) =
                  state.values.block(b * S + kept[static_cast<std::size_t>(r)], h * d, 1, d);
            }
            Vector<T> wk, wkv;
            robust_kde_key_weights<T>(keys, values, kernel.range.scale,
                                      static_cast<T>(variant().huber_a), wk, wkv);
            key_weights[t] = Vector<T>::Zero(S);
            key_value_weights[t] = Vector<T>::Zero(S);
            for (Index r = 0; r < n; ++r) {
              key_weights[t][kept[static_cast<std::size_t>(r)]] = wk[r];
              key_value_weights[t][kept[static_cast<std::size_t>(r)]] = wkv[r];
            }
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
      if (!key_weights.empty()) {
        const auto sequence_head = static_cast<std::size_t>(b * H + h);
        head.numerator_key_weights = key_value_weights[sequence_head].data();
        head.denominator_key_weights = key_weights[sequence_head].data();
      }
      return head;
    };
    const auto context_at = [&](Index task) {
      const Index b = task % B, h = task / B;
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
            const MatrixMap<T> weights = keep_weights ? state.weights.matrix({task % B, task / B})
                                                      : MatrixMap<T>(scratch.data(), L, S);
            reference_attention<T>(head_at(task), kernel, weights, context_at(task));
          },
          options.parallel);
    }

    // NeuTRENO's fidelity term, U = A V + lambda (V^0 - V), on every head at once.
    if (variant().type == AttentionVariantType::neutreno && stack.first)
      state.context += static_cast<T>(variant().neutreno_lambda) * (*stack.first - state.values);

    MultiHeadOutput<T> result;
    if (options.return_values || uses_stack_values(variant().type)) result.values = state.values;
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
};

}  // namespace attnlens
