// The fused engine's tile step specialized for the plain-softmax plan on AVX-512 (float):
// softmax(scale q.k) V for one query tile, scores kept transposed so that the online softmax
// runs along vectors of queries, on the packed GEMM kernels of core/gemm.hpp. The portable
// step (kernel/fused_engine.hpp) computes the same thing for every plan.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <memory>

#include "attnlens/core/detail/vector_math_avx512.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"

#if ATTNLENS_HAS_AVX512_KERNELS
namespace attnlens::detail {

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

namespace avx512 {

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

// One tile of plain softmax attention: rows x dv of the output for the queries [query_begin,
// query_begin + rows) of one head, over its keys [0, key_end).
struct SoftmaxTileTask {
  ConstMatrixRef<float> queries;  // L x d, the head's queries (unscaled)
  ConstMatrixRef<float> keys;     // S x d
  ConstMatrixRef<float> values;   // S x dv
  float scale;                    // of q.k
  Index query_begin, rows, key_end;
  // Null, or `rows` entries for each row's log-sum-exp max + log(sum exp(score - max)), what
  // a backward pass recomputes the probabilities from (fused_attention_tile writes the same).
  float* row_logsumexp = nullptr;
};

// out (rows x dv) = softmax(scale Q K^T) V for the task's queries and keys: no score terms,
// mask, window or key weights. Returns false, with out untouched, when the tile's queries or
// the keys or values hold an Inf or NaN (checked on the packed copies, while they are in
// cache): the caller then takes the portable path.
ATTNLENS_AVX512 inline bool softmax_tile(const SoftmaxTileTask& task, SoftmaxTileWorkspace& ws,
                                         MatrixRef<float> out) {
  const float* const q = task.queries.data();
  const float* const k = task.keys.data();
  const float* const v = task.values.data();
  const Index ldq = task.queries.outerStride(), ldk = task.keys.outerStride();
  const Index ldv = task.values.outerStride(), ldo = out.outerStride();
  const Index query_begin = task.query_begin, rows = task.rows, key_end = task.key_end;
  const float scale = task.scale;
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
    for (Index c = 0; c < dv; ++c) out.data()[r * ldo + c] = acc[r * dv + c] * inverse;
    if (task.row_logsumexp) task.row_logsumexp[r] = row_max[r] + std::log(row_sum[r]);
  }
  return true;
}

}  // namespace avx512
}  // namespace attnlens::detail
#endif
