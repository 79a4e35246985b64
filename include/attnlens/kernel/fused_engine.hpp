// The fused attention engine (DESIGN.md section 6): queries in tiles, keys in blocks, an online
// softmax (running maximum and sum, one rescale per block, one division at the end) around
// GEMMs on views of the tiles. Every range kernel, score term, mask, window and value term of
// the reference engine is applied per tile, keys outside the causal, length or window support
// are skipped, and boosting runs as repeated passes. Memory is O(L * d) per head plus a
// per-thread workspace sized once per call; nothing is allocated inside the tile loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/window.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct FusedTiling {
  Index query_tile = 128;  // query rows per tile (one thread's unit of work)
  Index key_block = 256;   // keys per online-softmax step
};

struct FusedOptions {
  FusedTiling tiling;
  ParallelOptions parallel;
};

// The scratch one thread needs for one tile: sized once, reused for every tile and block.
template <class T>
struct FusedWorkspace {
  Matrix<T> scores;         // query_tile x key_block
  Matrix<T> probabilities;  // query_tile x key_block, exp(score - running max)
  Matrix<T> finite_values;  // key_block x dv, only when some values are NaN or Inf
  Matrix<T> accumulator;    // query_tile x dv, unnormalized output
  Vector<T> row_max;
  Vector<T> row_sum;
  SerialGemm<T> score_gemm;  // q k^T: query_tile x key_block, depth d
  SerialGemm<T> value_gemm;  // P V: query_tile x dv, depth key_block

  FusedWorkspace(const FusedTiling& tiling, Index key_dim, Index value_dim)
      : scores(tiling.query_tile, tiling.key_block),
        probabilities(tiling.query_tile, tiling.key_block),
        finite_values(tiling.key_block, value_dim),
        accumulator(tiling.query_tile, value_dim),
        row_max(tiling.query_tile),
        row_sum(tiling.query_tile),
        score_gemm(tiling.query_tile, tiling.key_block, key_dim),
        value_gemm(tiling.query_tile, value_dim, tiling.key_block) {}

  // The matrices and vectors; Eigen's packing buffers add about one tile more.
  static std::size_t bytes(const FusedTiling& tiling, Index key_dim, Index value_dim) {
    const auto q = static_cast<std::size_t>(tiling.query_tile);
    const auto k = static_cast<std::size_t>(tiling.key_block);
    const auto d = static_cast<std::size_t>(key_dim);
    const auto dv = static_cast<std::size_t>(value_dim);
    const std::size_t packing = (q + k) * d + (q + dv) * k;
    return sizeof(T) * (2 * q * k + k * dv + q * dv + 2 * q + packing);
  }
};

namespace detail {

#if ATTNLENS_HAS_AVX512_KERNELS
// x - x is 0 for a finite x and NaN for Inf or NaN: a sum of such differences over vectors says
// whether all of them were finite, at one subtraction and one add per vector.
ATTNLENS_AVX512 inline __m512 add_nonfinite(__m512 sum, __m512 x) {
  return _mm512_add_ps(sum, _mm512_sub_ps(x, x));
}
ATTNLENS_AVX512 inline bool none_nonfinite(__m512 sum) {
  return _mm512_cmp_ps_mask(sum, sum, _CMP_ORD_Q) == __mmask16(0xFFFF);
}

ATTNLENS_AVX512 inline bool all_finite_avx512(const float* x, Index rows, Index cols, Index ld) {
  __m512 sum = _mm512_setzero_ps();
  for (Index r = 0; r < rows; ++r, x += ld)
    for (Index c = 0; c < cols; c += 16)
      sum = add_nonfinite(sum, _mm512_maskz_loadu_ps(avx512::tail_mask(cols - c), x + c));
  return none_nonfinite(sum);
}
#endif

// Eigen's allFinite() is not vectorized; a NaN-propagating max of |x| is.
template <class T>
bool all_finite(ConstMatrixRef<T> x) {
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512()) return all_finite_avx512(x.data(), x.rows(), x.cols(), x.outerStride());
#endif
  return x.size() == 0 || std::isfinite(x.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>());
}

// Whether the kernel is softmax(scale q.k) alone: no score or value terms, mask, window, key
// weights or epsilon.
template <class T>
bool is_plain_softmax(const AttentionKernel<T>& kernel, const HeadInputs<T>& head) {
  return kernel.range.type == RangeKernelType::dot_product &&
         (!kernel.terms || kernel.terms->empty()) && !kernel.mask && !kernel.window.active() &&
         (!kernel.value_terms || kernel.value_terms->empty()) && kernel.epsilon == T(0) &&
         !head.numerator_key_weights && !head.denominator_key_weights;
}

inline void check_tiling(const FusedTiling& tiling) {
  require_argument(tiling.query_tile > 0, "FusedTiling::query_tile", "> 0", tiling.query_tile);
  require_argument(tiling.key_block > 0, "FusedTiling::key_block", "> 0", tiling.key_block);
}

// The tiling a problem of `queries` x `keys` runs with: tiles no larger than the problem, so
// that an oversized option costs neither memory nor an index overflow, and the same tiles.
inline FusedTiling fitted_tiling(const FusedTiling& tiling, Index queries, Index keys) {
  check_tiling(tiling);
  return {std::min(tiling.query_tile, std::max<Index>(queries, 1)),
          std::min(tiling.key_block, std::max<Index>(keys, 1))};
}

// One block of keys [key_begin, key_begin + cols) for the tile's queries: scores, support,
// online-softmax update of (row_max, row_sum, accumulator).
template <class T>
void fused_key_block(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                     bool values_finite, Index query_begin, Index rows, Index key_begin, Index cols,
                     FusedWorkspace<T>& ws) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index dv = head.values.cols();
  auto scores = ws.scores.topLeftCorner(rows, cols);
  auto probabilities = ws.probabilities.topLeftCorner(rows, cols);
  auto accumulator = ws.accumulator.topLeftCorner(rows, dv);
  const auto queries = head.queries.middleRows(query_begin, rows);
  const auto keys = head.keys.middleRows(key_begin, cols);
  const auto values = head.values.middleRows(key_begin, cols);
  const TileCoords at{head.batch, head.head, query_begin, key_begin};

  range_scores<T>(kernel.range, queries, keys, scores, ws.score_gemm);
  if (kernel.terms)
    for (const auto& term : *kernel.terms) term->add(ScoreTile<T>{at, queries, keys}, scores);
  if (kernel.mask) kernel.mask->apply(at, scores);
  apply_window<T>(kernel.window, at, scores);

  for (Index r = 0; r < rows; ++r) {
    const T block_max = scores.row(r).maxCoeff();
    if (block_max == neg_inf) {
      probabilities.row(r).setZero();
      continue;
    }
    T& running_max = ws.row_max[r];
    if (block_max > running_max) {  // rescale what was summed so far, once per block
      const T factor = running_max == neg_inf ? T(0) : std::exp(running_max - block_max);
      accumulator.row(r) *= factor;
      ws.row_sum[r] *= factor;
      running_max = block_max;
    }
    detail::exp_shifted(scores.row(r), running_max, probabilities.row(r));
    ws.row_sum[r] += head.denominator_key_weights
                         ? probabilities.row(r).dot(Eigen::Map<const RowVector<T>>(
                               head.denominator_key_weights + key_begin, cols))
                         : probabilities.row(r).sum();
  }
  if (head.numerator_key_weights)
    probabilities.array().rowwise() *= Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(
        head.numerator_key_weights + key_begin, cols);

  if (values_finite) {
    ws.value_gemm.add_product(T(1), probabilities, values, accumulator);
  } else {
    // A key whose value is NaN or Inf reaches exactly the queries whose support holds it.
    auto finite = ws.finite_values.topLeftCorner(cols, dv);
    for (Index c = 0; c < cols; ++c) {
      if (values.row(c).allFinite())
        finite.row(c) = values.row(c);
      else
        finite.row(c).setZero();
    }
    ws.value_gemm.add_product(T(1), probabilities, finite, accumulator);
    for (Index c = 0; c < cols; ++c) {
      if (values.row(c).allFinite()) continue;
      for (Index r = 0; r < rows; ++r)
        if (scores(r, c) != neg_inf) accumulator.row(r) += probabilities(r, c) * values.row(c);
    }
  }
  if (kernel.value_terms)
    for (const auto& term : *kernel.value_terms) term->add(at, probabilities, accumulator);
}

#if ATTNLENS_HAS_AVX512_KERNELS
namespace avx512 {

// exp(x) for x <= 0 (scores minus their running maximum), about 1 ulp (Cephes' polynomial on
// [-ln2/2, ln2/2], scaled by 2^n with vscalefps). Arguments are clamped at log of the smallest
// normal number, as in exp_shifted.
ATTNLENS_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(k_log_min_normal<float>));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Scratch of the AVX-512 tile loop for plain softmax attention. Scores are kept transposed,
// keys x queries, so the online softmax runs along vectors of queries (no horizontal
// reductions), and the transposed probabilities are already the packed left operand of P V.
struct SoftmaxTileWorkspace {
  Index query_tile, key_block, key_dim, value_dim, ld;  // ld: queries rounded up to 32
  std::unique_ptr<float[]> queries;      // ld / 32 panels of key_dim x 32: scale * Q^T
  std::unique_ptr<float[]> keys;         // K of a key block in row panels (pack_row_panels)
  std::unique_ptr<float[]> values;       // V of a key block in 32-column panels of key_block x 32
  std::unique_ptr<float[]> scores;       // key_block x ld: S^T, then P^T in place
  std::unique_ptr<float[]> accumulator;  // query_tile x value_dim
  std::unique_ptr<float[]> row_max, row_sum, factor;  // ld each

  SoftmaxTileWorkspace(Index query_tile_, Index key_block_, Index key_dim_, Index value_dim_)
      : query_tile(query_tile_),
        key_block(key_block_),
        key_dim(key_dim_),
        value_dim(value_dim_),
        ld(round_up(query_tile_)),
        queries(new float[size(ld * key_dim)]),
        keys(new float[size(row_panels(key_block) * k_nr * key_dim)]),
        values(new float[size(key_block * round_up(value_dim))]),
        scores(new float[size(key_block * ld)]),
        accumulator(new float[size(query_tile * value_dim)]),
        row_max(new float[size(ld)]),
        row_sum(new float[size(ld)]),
        factor(new float[size(ld)]) {
    // Columns past a tile's queries are computed on but never read; keep them finite.
    std::fill(scores.get(), scores.get() + key_block * ld, 0.0f);
  }

  static Index round_up(Index n) { return (n + k_nr - 1) / k_nr * k_nr; }
  static std::size_t size(Index n) { return static_cast<std::size_t>(n); }

  static std::size_t bytes(Index query_tile, Index key_block, Index key_dim, Index value_dim) {
    const Index ld = round_up(query_tile);
    return sizeof(float) *
           size(ld * key_dim + row_panels(key_block) * k_nr * key_dim +
                key_block * round_up(value_dim) + key_block * ld + query_tile * value_dim + 3 * ld);
  }
};

// out (rows x dv) = softmax(scale Q K^T) V for the queries [query_begin, query_begin + rows) of
// one head over the keys [0, key_end): no score terms, mask, window or key weights. Returns false,
// with out untouched, when the tile's queries or the keys or values hold an Inf or NaN (checked
// on the packed copies, while they are in cache): the caller then takes the portable path.
ATTNLENS_AVX512 inline bool softmax_tile(const float* q, Index ldq, const float* k, Index ldk,
                                         const float* v, Index ldv, float scale, Index query_begin,
                                         Index rows, Index key_end, SoftmaxTileWorkspace& ws,
                                         float* out, Index ldo) {
  const Index d = ws.key_dim, dv = ws.value_dim, ld = ws.ld, vectors = ld / 16;
  const Index value_panels = (dv + k_nr - 1) / k_nr;
  float* const qt = ws.queries.get();
  float* const kp = ws.keys.get();
  float* const vp = ws.values.get();
  float* const st = ws.scores.get();
  float* const acc = ws.accumulator.get();
  float* const row_max = ws.row_max.get();
  float* const row_sum = ws.row_sum.get();
  float* const factor = ws.factor.get();
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 nonfinite = _mm512_setzero_ps();  // add_nonfinite over every input the tile reads
  for (Index p = 0; p * k_nr < rows; ++p) {
    float* panel = qt + p * d * k_nr;
    pack_panel_transposed(q + (query_begin + p * k_nr) * ldq, ldq, std::min(k_nr, rows - p * k_nr),
                          d, panel);
    for (Index i = 0; i < d * k_nr; i += 16) {
      const __m512 x = _mm512_loadu_ps(panel + i);
      nonfinite = add_nonfinite(nonfinite, x);
      _mm512_storeu_ps(panel + i, _mm512_mul_ps(vscale, x));
    }
  }
  if (!none_nonfinite(nonfinite)) return false;
  for (Index i = 0; i < ld; i += 16) {
    _mm512_storeu_ps(row_max + i, _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
    _mm512_storeu_ps(row_sum + i, _mm512_setzero_ps());
  }
  std::fill(acc, acc + rows * dv, 0.0f);

  for (Index j0 = 0; j0 < key_end; j0 += ws.key_block) {
    const Index cols = std::min(ws.key_block, key_end - j0);
    // S^T = K (scale Q)^T.
    pack_row_panels(k + j0 * ldk, ldk, cols, d, kp);
    for (Index i = 0; i < row_panels(cols) * d * k_nr; i += 16)
      nonfinite = add_nonfinite(nonfinite, _mm512_loadu_ps(kp + i));
    kernel_panels(cols, rows, d, kp, qt, k_nr, d * k_nr, st, ld, nullptr, false);
    // The block's values in 32-column panels: contiguous rows for the P V kernel.
    for (Index j = 0; j < cols; ++j) {
      const float* row = v + (j0 + j) * ldv;
      for (Index p = 0; p < value_panels; ++p) {
        const Index c0 = p * k_nr;
        float* dst = vp + (p * ws.key_block + j) * k_nr;
        const __m512 low = _mm512_maskz_loadu_ps(tail_mask(dv - c0), row + c0);
        const __m512 high = _mm512_maskz_loadu_ps(tail_mask(dv - c0 - 16), row + c0 + 16);
        nonfinite = add_nonfinite(add_nonfinite(nonfinite, low), high);
        _mm512_storeu_ps(dst, low);
        _mm512_storeu_ps(dst + 16, high);
      }
    }
    if (!none_nonfinite(nonfinite)) return false;
    // Online softmax along the queries: new maximum, rescale factor, P^T = exp(S^T - max) and
    // its sums, all on vectors of 16 queries. Columns past `rows` are never read.
    for (Index vq = 0; vq < vectors; ++vq) {
      __m512 block_max = _mm512_loadu_ps(st + 16 * vq);
      for (Index j = 1; j < cols; ++j)
        block_max = _mm512_max_ps(block_max, _mm512_loadu_ps(st + j * ld + 16 * vq));
      const __m512 old_max = _mm512_loadu_ps(row_max + 16 * vq);
      const __m512 new_max = _mm512_max_ps(old_max, block_max);
      const __m512 f = exp_nonpositive(_mm512_sub_ps(old_max, new_max));
      __m512 sum = _mm512_setzero_ps();
      for (Index j = 0; j < cols; ++j) {
        float* s = st + j * ld + 16 * vq;
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s), new_max));
        _mm512_storeu_ps(s, e);
        sum = _mm512_add_ps(sum, e);
      }
      _mm512_storeu_ps(row_max + 16 * vq, new_max);
      _mm512_storeu_ps(row_sum + 16 * vq,
                       _mm512_fmadd_ps(_mm512_loadu_ps(row_sum + 16 * vq), f, sum));
      _mm512_storeu_ps(factor + 16 * vq, f);
    }
    // acc = factor * acc + P V.
    for (Index r = 0; r < rows; ++r) {
      const __m512 f = _mm512_set1_ps(factor[r]);
      float* row = acc + r * dv;
      for (Index c = 0; c < dv; c += 16) {
        const __mmask16 mask = tail_mask(dv - c);
        _mm512_mask_storeu_ps(row + c, mask,
                              _mm512_mul_ps(f, _mm512_maskz_loadu_ps(mask, row + c)));
      }
    }
    // P^T is already k-major: the queries go in even tiles of at most 14.
    const Index query_tiles = (rows + k_mr - 1) / k_mr;
    for (Index t = 0; t < query_tiles; ++t) {
      const Index first = rows * t / query_tiles, count = rows * (t + 1) / query_tiles - first;
      kernel_block(count, dv, cols, st + first, ld, vp, k_nr, ws.key_block * k_nr, acc + first * dv,
                   dv, nullptr, true);
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const float inverse = 1.0f / row_sum[r];
    for (Index c = 0; c < dv; ++c) out[r * ldo + c] = acc[r * dv + c] * inverse;
  }
  return true;
}

}  // namespace avx512
#endif

}  // namespace detail

// Bytes of attention workspace fused_attention_heads allocates at most beyond its inputs and
// outputs: per thread one FusedWorkspace (and for float on AVX-512 one softmax tile workspace),
// plus a residual and a correction per head when boosting.
template <class T>
std::size_t fused_workspace_bytes(const FusedOptions& options, Index heads, Index queries,
                                  Index key_dim, Index value_dim, Index boost) {
  const FusedTiling tiling = detail::fitted_tiling(options.tiling, queries, queries);
  std::size_t per_thread = FusedWorkspace<T>::bytes(tiling, key_dim, value_dim);
#if ATTNLENS_HAS_AVX512_KERNELS
  if (std::is_same_v<T, float> && detail::use_avx512())
    per_thread += detail::avx512::SoftmaxTileWorkspace::bytes(tiling.query_tile, tiling.key_block,
                                                              key_dim, value_dim);
#endif
  const std::size_t boosting =
      boost > 0 ? 2 * sizeof(T) * static_cast<std::size_t>(heads * queries * value_dim) : 0;
  return static_cast<std::size_t>(thread_count(options.parallel)) * per_thread + boosting;
}

// out (rows x dv) = F(values) for the queries [query_begin, query_end) of one head, where
// F(X) = A X + value terms; the tile must come from a QueryTiling of the kernel's window.
template <class T>
void fused_attention_tile(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                          bool values_finite, Index query_begin, Index query_end,
                          const FusedTiling& tiling, FusedWorkspace<T>& ws, MatrixRef<T> out) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index rows = query_end - query_begin, dv = head.values.cols();
  ws.accumulator.topLeftCorner(rows, dv).setZero();
  ws.row_max.head(rows).setConstant(neg_inf);
  ws.row_sum.head(rows).setZero();
  const Index key_end =
      kernel.mask ? kernel.mask->key_end(head.batch, query_end) : head.keys.rows();
  for_each_key_range(kernel.window, query_begin, query_end, key_end, [&](Index j0, Index j1) {
    for (Index block = j0; block < j1; block += tiling.key_block)
      detail::fused_key_block<T>(head, kernel, values_finite, query_begin, rows, block,
                                 std::min(tiling.key_block, j1 - block), ws);
  });
  for (Index r = 0; r < rows; ++r) {
    if (ws.row_max[r] == neg_inf) {
      out.row(r).setZero();
      continue;
    }
    T denominator = ws.row_sum[r];
    if (kernel.epsilon > T(0)) denominator += kernel.epsilon * std::exp(-ws.row_max[r]);
    out.row(r) = ws.accumulator.row(r).head(dv) / denominator;
  }
}

// Runs `count` independent heads: head_at(t) gives head t's inputs, out_at(t) its output
// (L x dv). Threads take (head, query tile) pairs: one at a time, or for the softmax tiles,
// whose costs are equal, in contiguous blocks (Schedule::contiguous); boosting adds one pass
// per order, each reading the previous pass's output of every tile of the head.
template <class T, class HeadAt, class OutAt>
void fused_attention_heads(Index count, HeadAt&& head_at, OutAt&& out_at,
                           const AttentionKernel<T>& kernel, const FusedOptions& options) {
  detail::check_tiling(options.tiling);
  if (count == 0) return;
  const HeadInputs<T> first = head_at(0);
  check_head_inputs<T>(first, kernel, out_at(0).rows(), out_at(0).cols());
  const Index L = first.queries.rows(), dv = first.values.cols();
  FusedTiling tiling = detail::fitted_tiling(options.tiling, L, first.keys.rows());
  const QueryTiling tiles(kernel.window, L, tiling.query_tile);
  tiling.query_tile = tiles.max_rows();

  PerThread<FusedWorkspace<T>> workspaces(options.parallel);
  std::vector<char> values_finite(static_cast<std::size_t>(count));

  // Plain softmax attention (scale q.k, no terms, mask, window, weights or epsilon) runs on
  // the AVX-512 tile loop, tile by tile where the tile's inputs are finite (the portable path
  // handles Inf and NaN exactly as the reference engine does).
  bool softmax_kernel = false;
#if ATTNLENS_HAS_AVX512_KERNELS
  PerThread<detail::avx512::SoftmaxTileWorkspace> softmax_workspaces(options.parallel);
  if constexpr (std::is_same_v<T, float>)
    softmax_kernel = detail::use_avx512() && detail::is_plain_softmax(kernel, first);
#endif

  // One pass: target_at(t) = F(values of pass) for every head t. The portable path is told
  // whether a head's values are finite; the softmax tiles check their inputs themselves.
  const auto pass = [&](auto&& values_at, auto&& target_at) {
    if (!softmax_kernel)
      parallel_for(
          count,
          [&](Index t) {
            values_finite[static_cast<std::size_t>(t)] = detail::all_finite(values_at(t));
          },
          options.parallel);
    parallel_for(
        count * tiles.count(),
        [&](Index task) {
          const Index t = task / tiles.count();
          const auto [begin, end] = tiles[task % tiles.count()];
          const HeadInputs<T> inputs = head_at(t);
          const HeadInputs<T> head{inputs.batch,
                                   inputs.head,
                                   inputs.queries,
                                   inputs.keys,
                                   values_at(t),
                                   inputs.numerator_key_weights,
                                   inputs.denominator_key_weights};
          MatrixRef<T> target = target_at(t).middleRows(begin, end - begin);
#if ATTNLENS_HAS_AVX512_KERNELS
          if constexpr (std::is_same_v<T, float>) {
            if (softmax_kernel &&
                detail::avx512::softmax_tile(
                    head.queries.data(), head.queries.outerStride(), head.keys.data(),
                    head.keys.outerStride(), head.values.data(), head.values.outerStride(),
                    kernel.range.scale, begin, end - begin, head.keys.rows(),
                    softmax_workspaces.get(tiling.query_tile, tiling.key_block,
                                           first.queries.cols(), dv),
                    target.data(), target.outerStride()))
              return;
          }
#endif
          const bool finite_values = softmax_kernel ? detail::all_finite(head.values)
                                                    : values_finite[static_cast<std::size_t>(t)];
          fused_attention_tile<T>(head, kernel, finite_values, begin, end, tiling,
                                  workspaces.get(tiling, first.queries.cols(), dv), target);
        },
        options.parallel, softmax_kernel ? Schedule::contiguous : Schedule::dynamic);
  };

  pass([&](Index t) { return head_at(t).values; }, out_at);
  if (kernel.boost == 0) return;
  std::vector<Matrix<T>> residual(static_cast<std::size_t>(count), Matrix<T>(L, dv));
  std::vector<Matrix<T>> correction(static_cast<std::size_t>(count), Matrix<T>(L, dv));
  const auto at = [](std::vector<Matrix<T>>& v, Index t) -> Matrix<T>& {
    return v[static_cast<std::size_t>(t)];
  };
  for (Index step = 0; step < kernel.boost; ++step) {
    parallel_for(
        count, [&](Index t) { at(residual, t) = head_at(t).values - out_at(t); }, options.parallel);
    pass([&](Index t) { return ConstMatrixRef<T>(at(residual, t)); },
         [&](Index t) { return MatrixRef<T>(at(correction, t)); });
    parallel_for(
        count, [&](Index t) { out_at(t) += at(correction, t); }, options.parallel);
  }
}

// One head, all of its query tiles in parallel: out (L x dv) = the boosted smoother output.
template <class T>
void fused_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel, MatrixRef<T> out,
                     const FusedOptions& options = {}) {
  fused_attention_heads<T>(
      1, [&](Index) { return head; }, [&](Index) { return out; }, kernel, options);
}

}  // namespace attnlens
