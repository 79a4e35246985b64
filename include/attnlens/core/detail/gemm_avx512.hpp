// The AVX-512 float kernels of core/gemm.hpp, compiled through a target attribute and picked
// at run time (use_avx512), so every build uses them on a CPU that has AVX-512: x W^T with W
// read in place, and the packed micro-kernel the fused engine's softmax tile runs on.
#pragma once

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
// GCC 12's AVX-512 intrinsics trip -W(maybe-)uninitialized on their own _mm512_undefined_ps()
// when compiled through a target attribute (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
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

namespace attnlens::detail {

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
                                         Index ldb, Index n, float* c, Index ldc, const float* init,
                                         bool accumulate) {
  __mmask16 mask[2] = {tail_mask(n), tail_mask(n - 16)};
  __m512 acc[M][V];
  __m512 start[V];
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v)
    start[v] = init ? _mm512_maskz_loadu_ps(mask[v], init + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[r][v] = start[v];
  if (n == 16 * V) {
    for (Index k = 0; k < depth; ++k, a += lda, b += ldb) {
      __m512 bv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
      }
    }
  } else {
    for (Index k = 0; k < depth; ++k, a += lda, b += ldb) {
      __m512 bv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + 16 * v);
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 16
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

// r[q] becomes column q of the 16 x 16 matrix whose rows were r[0..15]: interleave 32-bit,
// 64-bit, then 128-bit lanes twice, and undo the lane order that leaves.
// Always inlined: a call would send the 16 registers through memory.
__attribute__((always_inline)) ATTNLENS_AVX512 inline void transpose16(__m512 r[16]) {
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
  constexpr int order[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
  for (int q = 0; q < 16; ++q) t[order[q]] = r[q];
  for (int q = 0; q < 16; ++q) r[q] = t[q];
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
      transpose16(r);
      for (int q = 0; q < 16; ++q) _mm512_storeu_ps(out + (k + q) * k_nr, r[q]);
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

// General products c += alpha A B on packed operands, for SerialGemm (the backward tiles, the
// weight gradients of a backward pass): A in row panels, B in 32-column panels, both k-major, each
// packed from either storage order. An operand's entry (i, k) of A is at data[i * ld + k], or at
// data[k * ld + i] when it is stored transposed (a^T of a row-major a: dS^T, dy^T); entry (k, j)
// of B at data[k * ld + j], or at data[j * ld + k] when transposed (the keys of q k^T).
struct Operand {
  const float* data;
  Index ld;
  bool transposed;
  const float* at(Index row, Index col) const {
    return transposed ? data + col * ld + row : data + row * ld + col;
  }
};

constexpr Index k_nc = 512;  // columns of B packed at once (256 x 512 floats, half of L2)

// Rows [0, rows) and depth [0, depth) of A into row panels (as pack_row_panels), times alpha:
// the scale is applied to an operand before the product, as SerialGemm promises.
ATTNLENS_AVX512 inline void pack_left(Operand a, Index rows, Index depth, float alpha, float* dst) {
  const Index panels = row_panels(rows);
  if (!a.transposed) {
    pack_row_panels(a.data, a.ld, rows, depth, dst);
  } else {
    for (Index p = 0; p < panels; ++p) {
      const Index begin = rows * p / panels, count = rows * (p + 1) / panels - begin;
      const __mmask16 low = tail_mask(count), high = tail_mask(count - 16);
      float* out = dst + p * depth * k_nr;
      for (Index k = 0; k < depth; ++k) {
        const float* src = a.data + k * a.ld + begin;
        _mm512_storeu_ps(out + k * k_nr, _mm512_maskz_loadu_ps(low, src));
        _mm512_storeu_ps(out + k * k_nr + 16, _mm512_maskz_loadu_ps(high, src + 16));
      }
    }
  }
  if (alpha == 1.0f) return;
  const __m512 scale = _mm512_set1_ps(alpha);
  for (Index i = 0; i < panels * depth * k_nr; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_mul_ps(scale, _mm512_loadu_ps(dst + i)));
}

// Depth [0, depth) and columns [0, cols) of B into 32-column panels of depth x 32 floats each.
ATTNLENS_AVX512 inline void pack_right(Operand b, Index depth, Index cols, float* dst) {
  for (Index p = 0; p * k_nr < cols; ++p) {
    const Index c0 = p * k_nr, width = std::min(k_nr, cols - c0);
    float* out = dst + p * depth * k_nr;
    if (b.transposed) {
      pack_panel_transposed(b.data + c0 * b.ld, b.ld, width, depth, out);
      continue;
    }
    const __mmask16 low = tail_mask(width), high = tail_mask(width - 16);
    for (Index k = 0; k < depth; ++k) {
      const float* src = b.data + k * b.ld + c0;
      _mm512_storeu_ps(out + k * k_nr, _mm512_maskz_loadu_ps(low, src));
      _mm512_storeu_ps(out + k * k_nr + 16, _mm512_maskz_loadu_ps(high, src + 16));
    }
  }
}

// Packing buffers of add_packed_product for products up to max_rows x max_cols x max_depth.
struct PackedOperands {
  std::unique_ptr<float[]> left, right;
  PackedOperands(Index max_rows, Index max_cols, Index max_depth) {
    const Index depth = std::min(std::max<Index>(max_depth, 1), k_kc);
    const Index rows = std::min(std::max<Index>(max_rows, 1), k_mc);
    const Index cols = std::min(std::max<Index>(max_cols, 1), k_nc);
    left.reset(new float[static_cast<std::size_t>(row_panels(rows) * k_nr * depth)]);
    right.reset(new float[static_cast<std::size_t>((cols + k_nr - 1) / k_nr * k_nr * depth)]);
  }
};

// c (m x n, row stride ldc) += alpha A B, A m x depth and B depth x n, on the calling thread:
// blocks of k_nc columns and k_kc depth of B packed once, then k_mc rows of A at a time.
ATTNLENS_AVX512 inline void add_packed_product(Index m, Index n, Index depth, float alpha,
                                               Operand a, Operand b, float* c, Index ldc,
                                               PackedOperands& packed) {
  for (Index j0 = 0; j0 < n; j0 += k_nc) {
    const Index cols = std::min(k_nc, n - j0);
    for (Index k0 = 0; k0 < depth; k0 += k_kc) {
      const Index kb = std::min(k_kc, depth - k0);
      pack_right({b.at(k0, j0), b.ld, b.transposed}, kb, cols, packed.right.get());
      for (Index i0 = 0; i0 < m; i0 += k_mc) {
        const Index rows = std::min(k_mc, m - i0);
        pack_left({a.at(i0, k0), a.ld, a.transposed}, rows, kb, alpha, packed.left.get());
        kernel_panels(rows, cols, kb, packed.left.get(), packed.right.get(), k_nr, kb * k_nr,
                      c + i0 * ldc + j0, ldc, nullptr, true);
      }
    }
  }
}

// Products with a weight read in place: c = x w^T + bias, with w row-major n x depth (a Linear's
// weight, PyTorch's layout). Each micro-tile holds 14 columns x 32 rows of c transposed: the
// broadcast operand walks 14 rows of w straight from memory, the vector operand is x packed per
// call into k-major panels of 32 rows (pack_panel_transposed), and the tile is transposed in
// registers when it is stored. w is never packed or cached, so the product costs no pass over
// the weights and can never see stale parameters.
constexpr int k_weight_cols = k_mr;    // columns of c per micro-tile: 28 accumulators
constexpr Index k_weight_rows = k_nr;  // rows of c per micro-tile: two vectors
constexpr Index k_weight_depth = 768;  // most depth per block: 14 rows of w (42 KiB) stay in L1
constexpr Index k_weight_chunk = 128;  // rows of x packed at once (at most 384 KiB, in L2)

// c (rows <= 32 x M, row stride ldc) [+]= x w^T (+ bias): w's M rows at stride ldw from w, x as a
// k-major panel of 32 rows at xp. Not inlined: inside a large caller the 28 accumulators and 14
// row addresses get spilled.
template <int M>
__attribute__((noinline)) ATTNLENS_AVX512 void weight_kernel(Index depth, const float* w, Index ldw,
                                                             const float* xp, Index rows, float* c,
                                                             Index ldc, const float* bias,
                                                             bool accumulate) {
  __m512 acc[M][2];
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r) {
    const __m512 start = bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
    acc[r][0] = start;
    acc[r][1] = start;
  }
  for (Index k = 0; k < depth; ++k, xp += k_weight_rows, ++w) {
    const __m512 x0 = _mm512_loadu_ps(xp), x1 = _mm512_loadu_ps(xp + 16);
#pragma GCC unroll 16
    for (int r = 0; r < M; ++r) {
      const __m512 wr = _mm512_set1_ps(w[r * ldw]);
      acc[r][0] = _mm512_fmadd_ps(wr, x0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(wr, x1, acc[r][1]);
    }
  }
  const __mmask16 columns = tail_mask(M);
#pragma GCC unroll 2
  for (int v = 0; v < 2; ++v) {
    __m512 t[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) t[r] = r < M ? acc[r][v] : _mm512_setzero_ps();
    transpose16(t);
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
      const Index row = 16 * v + q;
      if (row >= rows) break;
      float* target = c + row * ldc;
      __m512 sum = t[q];
      if (accumulate) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(columns, target));
      _mm512_mask_storeu_ps(target, columns, sum);
    }
  }
}

ATTNLENS_AVX512 inline void weight_tile(Index cols, Index depth, const float* w, Index ldw,
                                        const float* xp, Index rows, float* c, Index ldc,
                                        const float* bias, bool accumulate) {
#define ATTNLENS_COLS(M) \
  case M:                \
    return weight_kernel<M>(depth, w, ldw, xp, rows, c, ldc, bias, accumulate);
  switch (cols) {
    ATTNLENS_COLS(1)
    ATTNLENS_COLS(2)
    ATTNLENS_COLS(3)
    ATTNLENS_COLS(4)
    ATTNLENS_COLS(5)
    ATTNLENS_COLS(6)
    ATTNLENS_COLS(7)
    ATTNLENS_COLS(8)
    ATTNLENS_COLS(9)
    ATTNLENS_COLS(10)
    ATTNLENS_COLS(11)
    ATTNLENS_COLS(12)
    ATTNLENS_COLS(13)
    ATTNLENS_COLS(14)
    default:
      return;
  }
#undef ATTNLENS_COLS
}

// A destination of a product: entry (i, j) of c. Plain matrices, or q, k and v as three
// matrices that together are the columns of one product (a column tile never straddles two).
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

// Columns [begin, begin + cols) of c that one micro-tile computes.
struct ColumnTile {
  Index begin, cols;
};

// c's columns in tiles of at most 14, each part of the destination split evenly. The parts'
// tiles alternate (q, k, v, q, k, v, ...), so a contiguous range of tiles covers about the same
// columns, the same heads, of every part.
inline std::vector<ColumnTile> column_tiles(Index n, const Destination& c) {
  const Index width = c.split > 0 ? c.split : n;
  const Index count = (width + k_weight_cols - 1) / k_weight_cols;
  std::vector<ColumnTile> tiles;
  for (Index t = 0; t < count; ++t)
    for (Index part = 0; part < n; part += width)
      tiles.push_back({part + width * t / count, width * (t + 1) / count - width * t / count});
  return tiles;
}

// Rows [row_begin, row_end) and tiles [first, last) of c = x w^T + bias on the calling thread;
// x_pack holds k_weight_chunk x min(depth, k_weight_depth) floats.
ATTNLENS_AVX512 inline void weight_product(const float* x, Index ldx, const float* w, Index ldw,
                                           const float* bias, Index depth,
                                           const std::vector<ColumnTile>& tiles, Index first,
                                           Index last, Index row_begin, Index row_end,
                                           const Destination& c, float* x_pack) {
  const Index blocks = (depth + k_weight_depth - 1) / k_weight_depth;
  for (Index r0 = row_begin; r0 < row_end; r0 += k_weight_chunk) {
    const Index rows = std::min(k_weight_chunk, row_end - r0);
    for (Index block = 0; block < blocks; ++block) {
      const Index pc = depth * block / blocks, kb = depth * (block + 1) / blocks - pc;
      for (Index i = 0; i < rows; i += k_weight_rows)
        pack_panel_transposed(x + (r0 + i) * ldx + pc, ldx, std::min(k_weight_rows, rows - i), kb,
                              x_pack + i * kb);
      for (Index t = first; t < last; ++t) {
        const ColumnTile tile = tiles[static_cast<std::size_t>(t)];
        const float* init = block == 0 && bias ? bias + tile.begin : nullptr;
        for (Index i = 0; i < rows; i += k_weight_rows)
          weight_tile(tile.cols, kb, w + tile.begin * ldw + pc, ldw, x_pack + i * kb,
                      std::min(k_weight_rows, rows - i), c.at(r0 + i, tile.begin), c.stride, init,
                      block > 0);
      }
    }
  }
}

// c (m x n) = x (m x depth, row-major) w^T + bias on the threads of `parallel`; w is n x depth,
// row-major, bias null or n entries. The threads split a plain c along its longer side: each
// reads all of the shorter operand, so what is read twice is the smaller of x and w. q, k and v
// are split by columns, thread t taking block t of the heads: the block its attention tasks read
// next (MultiHeadAttention orders them head-major, Schedule::contiguous).
inline void product_transposed(const float* x, Index ldx, const float* w, Index ldw,
                               const float* bias, Index m, Index n, Index depth,
                               const Destination& c, const ParallelOptions& parallel) {
  const std::vector<ColumnTile> tiles = column_tiles(n, c);
  const auto tile_count = static_cast<Index>(tiles.size());
  const bool by_rows = c.split == 0 && m >= n;
  const Index units = by_rows ? (m + k_weight_rows - 1) / k_weight_rows : tile_count;
  const Index chunks = std::max<Index>(1, std::min<Index>(thread_count(parallel), units));
  parallel_for(
      chunks,
      [&](Index part) {
        const Index begin = units * part / chunks, end = units * (part + 1) / chunks;
        const std::unique_ptr<float[]> x_pack(
            new float[static_cast<std::size_t>(k_weight_chunk * std::min(depth, k_weight_depth))]);
        if (by_rows)
          weight_product(x, ldx, w, ldw, bias, depth, tiles, 0, tile_count, begin * k_weight_rows,
                         std::min(m, end * k_weight_rows), c, x_pack.get());
        else
          weight_product(x, ldx, w, ldw, bias, depth, tiles, begin, end, 0, m, c, x_pack.get());
      },
      parallel, Schedule::contiguous);
}

}  // namespace avx512
#endif

}  // namespace attnlens::detail
