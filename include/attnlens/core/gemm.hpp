// Serial matrix products on views: Eigen's own blocked GEMM kernel, called without Eigen's
// OpenMP dispatch. A caller that runs single-threaded outside a parallel region would
// otherwise make Eigen fork threads for every small tile product; attnlens decides its own
// threads (DESIGN.md section 6). Packing buffers are allocated once, for the largest product,
// and reused, so the tile loop allocates nothing.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/types.hpp"

// float GEMMs get a register-blocked AVX-512 kernel, compiled for AVX-512 through a target
// attribute and picked at run time, so every build uses it on a CPU that has AVX-512 (Eigen
// 3.4's kernel uses 12 of the 32 vector registers and runs at about 60% of this one's speed).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized on their own _mm512_undefined_ps()
// when compiled through a target attribute (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define ATTNLENS_HAS_AVX512_KERNELS 1
#define ATTNLENS_AVX512 __attribute__((target("avx512f")))
#else
#define ATTNLENS_HAS_AVX512_KERNELS 0
#endif

namespace attnlens {

namespace detail {

// Whether the AVX-512 float kernels run: the CPU has AVX-512F and the environment does not set
// ATTNLENS_NO_AVX512 (to time or test the portable path on the same machine).
inline bool use_avx512() {
#if ATTNLENS_HAS_AVX512_KERNELS
  static const bool enabled =
      __builtin_cpu_supports("avx512f") && std::getenv("ATTNLENS_NO_AVX512") == nullptr;
  return enabled;
#else
  return false;
#endif
}

#if ATTNLENS_HAS_AVX512_KERNELS
namespace avx512 {

constexpr Index k_nr = 32;   // columns of a micro-tile: two vectors
constexpr int k_mr = 14;     // rows of a micro-tile: 28 accumulators of the 32 registers
constexpr Index k_kc = 256;  // depth of a packed block of A (14 x 256 floats stay in L1)
constexpr Index k_mc = 224;  // rows of A packed at once (8 panels of 256 x 32 floats, in L2)

ATTNLENS_AVX512 inline __mmask16 tail_mask(Index n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// c (M x n, n <= 32 columns, row stride ldc) = [c +] init + sum_k a_k (x) b_k, where step k reads
// the M row entries a + k * lda (contiguous) and the n column entries b + k * ldb (contiguous).
// init is a row of n entries added to every row (a bias), or null.
template <int M, int V>
ATTNLENS_AVX512 inline void micro_kernel(Index depth, const float* a, Index lda, const float* b,
                                         Index ldb, Index n, float* c, Index ldc,
                                         const float* init, bool accumulate) {
  __mmask16 mask[2] = {tail_mask(n), tail_mask(n - 16)};
  __m512 acc[M][V];
  __m512 start[V];
  for (int v = 0; v < V; ++v)
    start[v] = init ? _mm512_maskz_loadu_ps(mask[v], init + 16 * v) : _mm512_setzero_ps();
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = start[v];
  if (n == 16 * V) {
    for (Index k = 0; k < depth; ++k, a += lda, b += ldb) {
      __m512 bv[V];
      for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
      for (int r = 0; r < M; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r]);
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
      }
    }
  } else {
    for (Index k = 0; k < depth; ++k, a += lda, b += ldb) {
      __m512 bv[V];
      for (int v = 0; v < V; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + 16 * v);
      for (int r = 0; r < M; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r]);
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < V; ++v) {
      float* target = c + r * ldc + 16 * v;
      __m512 x = acc[r][v];
      if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], target));
      _mm512_mask_storeu_ps(target, mask[v], x);
    }
}

template <int V>
ATTNLENS_AVX512 inline void micro_kernel_rows(Index m, Index depth, const float* a, Index lda,
                                              const float* b, Index ldb, Index n, float* c,
                                              Index ldc, const float* init, bool accumulate) {
#define ATTNLENS_ROWS(M) \
  case M:                \
    return micro_kernel<M, V>(depth, a, lda, b, ldb, n, c, ldc, init, accumulate);
  switch (m) {
    ATTNLENS_ROWS(1)
    ATTNLENS_ROWS(2)
    ATTNLENS_ROWS(3)
    ATTNLENS_ROWS(4)
    ATTNLENS_ROWS(5)
    ATTNLENS_ROWS(6)
    ATTNLENS_ROWS(7)
    ATTNLENS_ROWS(8)
    ATTNLENS_ROWS(9)
    ATTNLENS_ROWS(10)
    ATTNLENS_ROWS(11)
    ATTNLENS_ROWS(12)
    ATTNLENS_ROWS(13)
    ATTNLENS_ROWS(14)
    default:
      return;
  }
#undef ATTNLENS_ROWS
}

// c (m x n) [+]= A B (+ init on every row), with A given column-panel-wise: the m <= 14 entries of
// step k at a + k * lda, and B's rows at b + k * ldb; n is split into 32-column panels whose
// B rows are at b + panel_stride * p.
ATTNLENS_AVX512 inline void kernel_block(Index m, Index n, Index depth, const float* a, Index lda,
                                         const float* b, Index ldb, Index panel_stride, float* c,
                                         Index ldc, const float* init, bool accumulate) {
  for (Index j = 0; j < n; j += k_nr) {
    const Index cols = std::min(k_nr, n - j);
    const float* panel = b + (j / k_nr) * panel_stride;
    const float* row_init = init ? init + j : nullptr;
    if (cols > 16)
      micro_kernel_rows<2>(m, depth, a, lda, panel, ldb, cols, c + j, ldc, row_init, accumulate);
    else
      micro_kernel_rows<1>(m, depth, a, lda, panel, ldb, cols, c + j, ldc, row_init, accumulate);
  }
}

// dst[k * 32 + c] = src[c * ld + k] for c < cols (zero beyond), k < depth: 32 rows of a row-major
// matrix (a panel of W for x W^T) turned into a 32-column panel. 16 x 16 transposes in registers.
ATTNLENS_AVX512 inline void pack_panel_transposed(const float* src, Index ld, Index cols,
                                                  Index depth, float* dst) {
  for (Index half = 0; half < 2; ++half) {
    const Index rows = std::clamp<Index>(cols - 16 * half, 0, 16);
    const float* base = src + 16 * half * ld;
    float* out = dst + 16 * half;
    Index k = 0;
    for (; k + 16 <= depth; k += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_loadu_ps(base + i * ld + k) : _mm512_setzero_ps();
      // 16 x 16 transpose: interleave 32-bit, 64-bit, then 128-bit lanes twice.
      __m512 t[16];
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4)
        for (int j = 0; j < 2; ++j) {
          r[i + j] = _mm512_castpd_ps(
              _mm512_unpacklo_pd(_mm512_castps_pd(t[i + j]), _mm512_castps_pd(t[i + j + 2])));
          r[i + j + 2] = _mm512_castpd_ps(
              _mm512_unpackhi_pd(_mm512_castps_pd(t[i + j]), _mm512_castps_pd(t[i + j + 2])));
        }
      for (int i = 0; i < 16; i += 8)
        for (int j = 0; j < 4; ++j) {
          t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
          t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xDD);
        }
      for (int j = 0; j < 8; ++j) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
      }
      // r[q] now holds column k + lane(q) of the 16 rows, where the lanes come out permuted.
      constexpr int order[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
      for (int q = 0; q < 16; ++q) _mm512_storeu_ps(out + (k + order[q]) * k_nr, r[q]);
    }
    for (; k < depth; ++k)
      for (Index i = 0; i < 16; ++i) out[k * k_nr + i] = i < rows ? base[i * ld + k] : 0.0f;
  }
}

// Left operands go in row panels of at most 28 rows, packed by pack_panel_transposed (k-major,
// stride 32) and consumed as two micro-tiles of at most 14 rows each.
constexpr Index k_panel_rows = 2 * k_mr;

inline Index row_panels(Index rows) { return (rows + k_panel_rows - 1) / k_panel_rows; }

// Packs rows [0, rows) of src (row-major, stride ld, depth columns) into row_panels(rows) panels
// of depth x 32 floats at dst, the rows split evenly over the panels.
ATTNLENS_AVX512 inline void pack_row_panels(const float* src, Index ld, Index rows, Index depth,
                                            float* dst) {
  const Index panels = row_panels(rows);
  for (Index p = 0; p < panels; ++p) {
    const Index begin = rows * p / panels, end = rows * (p + 1) / panels;
    pack_panel_transposed(src + begin * ld, ld, end - begin, depth, dst + p * depth * k_nr);
  }
}

// c (rows x n) [+]= A B (+ init) with A packed by pack_row_panels (depth x 32 per panel) and B
// as in kernel_block; row r of the product goes to c + r * ldc.
ATTNLENS_AVX512 inline void kernel_panels(Index rows, Index n, Index depth, const float* a,
                                          const float* b, Index ldb, Index panel_stride, float* c,
                                          Index ldc, const float* init, bool accumulate) {
  const Index panels = row_panels(rows);
  for (Index p = 0; p < panels; ++p) {
    const Index begin = rows * p / panels, count = rows * (p + 1) / panels - begin;
    const Index first = (count + 1) / 2;
    const float* panel = a + p * depth * k_nr;
    kernel_block(first, n, depth, panel, k_nr, b, ldb, panel_stride, c + begin * ldc, ldc, init,
                 accumulate);
    if (count > first)
      kernel_block(count - first, n, depth, panel + first, k_nr, b, ldb, panel_stride,
                   c + (begin + first) * ldc, ldc, init, accumulate);
  }
}

// A destination of a product: entry (i, j) of c. Plain matrices, or q, k and v as three
// matrices that together are the columns of one product (a panel never straddles two of them).
struct Destination {
  float* data;
  Index stride;
  Index split = 0;  // > 0: columns [s * split, (s + 1) * split) go to parts[s]
  float* parts[3] = {nullptr, nullptr, nullptr};
  float* at(Index i, Index j) const {
    if (split == 0) return data + i * stride + j;
    return parts[j / split] + i * stride + j % split;
  }
};

// c (m x n) = a (m x depth, row-major) * bp + bias, bp packed by pack_panel_transposed: panel p
// (columns 32p..32p+31) at bp + p * depth * 32. a_pack holds row_panels(k_mc) * 32 * k_kc floats. Columns and
// rows count from (row0, col0) of c.
ATTNLENS_AVX512 inline void gemm_packed(Index m, Index n, Index depth, const float* a, Index lda,
                                        const float* bp, const float* bias, const Destination& c,
                                        Index row0, Index col0, float* a_pack) {
  // Rows go in chunks of at most k_mc, split evenly; each chunk in panels of at most 28 rows.
  const Index chunks = (m + k_mc - 1) / k_mc;
  for (Index chunk = 0; chunk < chunks; ++chunk) {
    const Index ic = m * chunk / chunks, mb = m * (chunk + 1) / chunks - ic;
    const Index panels = row_panels(mb);
    for (Index pc = 0; pc < depth; pc += k_kc) {
      const Index kb = std::min(k_kc, depth - pc);
      pack_row_panels(a + ic * lda + pc, lda, mb, kb, a_pack);
      for (Index j = 0; j < n; j += k_nr) {
        const float* panel = bp + (j / k_nr) * depth * k_nr + pc * k_nr;
        const float* init = pc == 0 && bias ? bias + j : nullptr;
        const Index cols = std::min(k_nr, n - j);
        for (Index p = 0; p < panels; ++p) {
          const Index begin = mb * p / panels, count = mb * (p + 1) / panels - begin;
          const Index first = (count + 1) / 2;
          const float* a_panel = a_pack + p * kb * k_nr;
          kernel_block(first, cols, kb, a_panel, k_nr, panel, k_nr, 0,
                       c.at(row0 + ic + begin, col0 + j), c.stride, init, pc > 0);
          if (count > first)
            kernel_block(count - first, cols, kb, a_panel + first, k_nr, panel, k_nr, 0,
                         c.at(row0 + ic + begin + first, col0 + j), c.stride, init, pc > 0);
        }
      }
    }
  }
}

// c = a * b^T + bias on the threads of `parallel` (see parallel_product_transposed).
// Floats of b (n x depth) packed into 32-column panels.
inline Index packed_size(Index n, Index depth) { return (n + k_nr - 1) / k_nr * k_nr * depth; }

// b (n x depth, row-major) packed into 32-column panels, once, for product_transposed.
inline std::unique_ptr<float[]> pack_transposed(const float* b, Index ldb, Index n, Index depth,
                                                const ParallelOptions& parallel) {
  std::unique_ptr<float[]> packed(new float[static_cast<std::size_t>(packed_size(n, depth))]);
  parallel_for(
      (n + k_nr - 1) / k_nr,
      [&](Index p) {
        pack_panel_transposed(b + p * k_nr * ldb, ldb, std::min(k_nr, n - p * k_nr), depth,
                              packed.get() + p * depth * k_nr);
      },
      parallel);
  return packed;
}

// prepacked: b already packed by pack_transposed (b is then not read), or null.
inline void product_transposed(const float* a, Index lda, const float* b, Index ldb,
                               const float* bias, Index m, Index n, Index depth,
                               const Destination& c, const ParallelOptions& parallel,
                               const float* prepacked = nullptr) {
  const Index chunks =
      std::max<Index>(1, std::min<Index>(thread_count(parallel), std::max(m, n) / 32));
  const std::unique_ptr<float[]> storage(
      prepacked ? nullptr : new float[static_cast<std::size_t>(packed_size(n, depth))]);
  float* const packed_data = storage.get();
  const float* const panels_data = prepacked ? prepacked : packed_data;
  const auto pack = [&](Index p) {
    if (prepacked) return;
    pack_panel_transposed(b + p * k_nr * ldb, ldb, std::min(k_nr, n - p * k_nr), depth,
                          packed_data + p * depth * k_nr);
  };
  // Split along the longer side. Row chunks share all of b's panels, packed first by all
  // threads; column chunks hold whole panels, and each thread packs its own (they stay in its
  // cache, and one fork-join is saved).
  const bool by_rows = m >= n;
  if (by_rows && !prepacked) parallel_for((n + k_nr - 1) / k_nr, pack, parallel);
  const Index unit = by_rows ? 1 : k_nr, extent = by_rows ? m : n;
  const Index units = (extent + unit - 1) / unit;
  const Index per_chunk = (units + chunks - 1) / chunks;
  parallel_for(
      chunks,
      [&](Index part) {
        const Index begin = part * per_chunk * unit;
        const Index count = std::min(per_chunk * unit, extent - begin);
        if (count <= 0) return;
        const std::unique_ptr<float[]> a_pack(
            new float[static_cast<std::size_t>(row_panels(k_mc) * k_nr * k_kc)]);
        if (by_rows) {
          gemm_packed(count, n, depth, a + begin * lda, lda, panels_data, bias, c, begin, 0,
                      a_pack.get());
          return;
        }
        for (Index p = begin / k_nr; p * k_nr < begin + count; ++p) pack(p);
        gemm_packed(m, count, depth, a, lda, panels_data + (begin / k_nr) * depth * k_nr,
                    bias ? bias + begin : nullptr, c, 0, begin, a_pack.get());
      },
      parallel);
}

}  // namespace avx512
#endif

}  // namespace detail

template <class T>
class SerialGemm {
 public:
  // Buffers for products c (rows x cols) += a (rows x depth) * b (depth x cols) up to these sizes.
  SerialGemm(Index max_rows, Index max_cols, Index max_depth)
      : max_rows_(max_rows),
        max_cols_(max_cols),
        max_depth_(max_depth),
        blocking_(std::make_unique<Blocking>(max_rows, max_cols, max_depth, 1, true)) {
    blocking_->allocateAll();
  }

  // c += alpha * a * b^T, with b given row-major as cols x depth (keys, for q k^T).
  void add_product_transposed(T alpha, ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c) {
    check(a, b.cols(), b.rows(), c);
    Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::RowMajor, false, T,
                                                   Eigen::ColMajor, false, Eigen::RowMajor,
                                                   1>::run(c.rows(), c.cols(), a.cols(), a.data(),
                                                           a.outerStride(), b.data(),
                                                           b.outerStride(), c.data(), 1,
                                                           c.outerStride(), alpha, *blocking_);
  }

  // c += alpha * a * b, with b row-major depth x cols (values, for A V).
  void add_product(T alpha, ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c) {
    check(a, b.rows(), b.cols(), c);
    Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::RowMajor, false, T,
                                                   Eigen::RowMajor, false, Eigen::RowMajor,
                                                   1>::run(c.rows(), c.cols(), a.cols(), a.data(),
                                                           a.outerStride(), b.data(),
                                                           b.outerStride(), c.data(), 1,
                                                           c.outerStride(), alpha, *blocking_);
  }

 private:
  using Blocking = Eigen::internal::gemm_blocking_space<Eigen::RowMajor, T, T, Eigen::Dynamic,
                                                        Eigen::Dynamic, Eigen::Dynamic, 1, false>;

  // The kernel trusts its sizes: a product larger than the buffers would write past them.
  void check(ConstMatrixRef<T> a, Index b_depth, Index b_cols, MatrixRef<T> c) const {
    const bool fits = a.rows() == c.rows() && b_cols == c.cols() && a.cols() == b_depth &&
                      c.rows() <= max_rows_ && c.cols() <= max_cols_ && a.cols() <= max_depth_;
    if (!fits)
      throw ShapeError(detail::concat("SerialGemm: product ", a.rows(), " x ", a.cols(), " * ",
                                      b_depth, " x ", b_cols, " into ", c.rows(), " x ", c.cols(),
                                      " does not fit buffers for ", max_rows_, " x ", max_depth_,
                                      " * ", max_depth_, " x ", max_cols_));
  }

  Index max_rows_, max_cols_, max_depth_;
  std::unique_ptr<Blocking> blocking_;
};

// c = a * b^T (+ bias on every row) on the threads of `parallel`, b row-major c.cols() x a.cols()
// (a Linear's weight), bias null or c.cols() entries. Each thread packs its own operands, so the
// product is split along the longer side of c: the operand that every thread must pack in full
// is then the smaller one. With the AVX-512 kernel, b is packed once (in parallel) into 32-column
// panels shared by all threads; packing per call keeps no state that could go stale when the
// parameters change, and costs one pass over b.
template <class T>
void parallel_product_transposed(ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c,
                                 const ParallelOptions& parallel, const T* bias = nullptr) {
  const bool by_rows = c.rows() >= c.cols();
  const Index extent = by_rows ? c.rows() : c.cols();
  const Index chunks = std::max<Index>(1, std::min<Index>(thread_count(parallel), extent / 32));
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>) {
    if (detail::use_avx512() && a.cols() > 0) {
      detail::avx512::product_transposed(a.data(), a.outerStride(), b.data(), b.outerStride(),
                                         bias, c.rows(), c.cols(), a.cols(),
                                         {c.data(), c.outerStride()}, parallel);
      return;
    }
  }
#endif
  const Index chunk = (extent + chunks - 1) / chunks;
  parallel_for(
      chunks,
      [&](Index part) {
        const Index begin = part * chunk, count = std::min(chunk, extent - begin);
        if (count <= 0) return;
        MatrixRef<T> target = by_rows ? MatrixRef<T>(c.middleRows(begin, count))
                                      : MatrixRef<T>(c.middleCols(begin, count));
        SerialGemm<T> gemm(target.rows(), target.cols(), a.cols());
        if (bias)
          target.rowwise() =
              Eigen::Map<const RowVector<T>>(bias + (by_rows ? 0 : begin), target.cols());
        else
          target.setZero();
        gemm.add_product_transposed(
            T(1), by_rows ? ConstMatrixRef<T>(a.middleRows(begin, count)) : a,
            by_rows ? b : ConstMatrixRef<T>(b.middleRows(begin, count)), target);
      },
      parallel);
}

}  // namespace attnlens
