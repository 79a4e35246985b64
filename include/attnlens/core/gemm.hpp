// Matrix products. SerialGemm: Eigen's own blocked GEMM kernel on views, called without Eigen's
// OpenMP dispatch (in a program built with OpenMP, a caller that runs single-threaded would
// otherwise make Eigen fork threads for every small tile product; attnlens decides its own threads,
// docs/performance.md), with packing buffers allocated once and reused, so a tile loop allocates
// nothing. parallel_product_transposed: x W^T for a Linear's weight on attnlens's threads. For
// float on AVX-512 CPUs, detail::avx512 (core/detail/gemm_avx512.hpp) has the register-blocked
// kernels of the fast paths: x W^T with W read in place, and the packed micro-kernel of the
// attention tiles.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnlens/core/detail/gemm_avx512.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

template <class T>
class SerialGemm {
 public:
  // Buffers for products c (rows x cols) += a (rows x depth) * b (depth x cols) up to these sizes.
  SerialGemm(Index max_rows, Index max_cols, Index max_depth)
      : max_rows_(max_rows),
        max_cols_(max_cols),
        max_depth_(max_depth),
        blocking_(std::make_unique<Blocking>(max_rows, max_cols, max_depth, 1, true)) {
#if ATTNLENS_HAS_AVX512_KERNELS
    if (packed_kernel()) {
      packed_ = std::make_unique<detail::avx512::PackedOperands>(max_rows, max_cols, max_depth);
      return;
    }
#endif
    blocking_->allocateAll();
  }

  // c += (alpha a) b^T, with b given row-major as cols x depth (keys, for q k^T). alpha scales
  // a before the product, as PyTorch scales q before q.k: entries of a and b too large for
  // their product (1e19 x 1e19 in float) stay finite when alpha brings them down first.
  void add_product_transposed(T alpha, ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c) {
    check(a.rows(), a.cols(), b.cols(), b.rows(), c);
    if (packed_product(alpha, a, false, b, true, c)) return;
    if (alpha != T(1)) {
      if (scaled_rows_.size() == 0) scaled_rows_.resize(max_rows_, max_depth_);
      auto scaled = scaled_rows_.topLeftCorner(a.rows(), a.cols());
      scaled = alpha * a;
      return add_product_transposed(T(1), scaled, b, c);
    }
    Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::RowMajor, false, T,
                                                   Eigen::ColMajor, false, Eigen::RowMajor,
                                                   1>::run(c.rows(), c.cols(), a.cols(), a.data(),
                                                           a.outerStride(), b.data(),
                                                           b.outerStride(), c.data(), 1,
                                                           c.outerStride(), T(1), *blocking_);
  }

  // c += alpha * a * b, with b row-major depth x cols (values, for A V).
  void add_product(T alpha, ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c) {
    check(a.rows(), a.cols(), b.rows(), b.cols(), c);
    if (packed_product(alpha, a, false, b, false, c)) return;
    Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::RowMajor, false, T,
                                                   Eigen::RowMajor, false, Eigen::RowMajor,
                                                   1>::run(c.rows(), c.cols(), a.cols(), a.data(),
                                                           a.outerStride(), b.data(),
                                                           b.outerStride(), c.data(), 1,
                                                           c.outerStride(), alpha, *blocking_);
  }

  // c += alpha * a^T * b, with a row-major depth x rows and b row-major depth x cols (the
  // gradients of backward passes: dW = dy^T x, dV = A^T dO, dK = dS^T Q).
  void add_transposed_product(T alpha, ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c) {
    check(a.cols(), a.rows(), b.rows(), b.cols(), c);
    if (packed_product(alpha, a, true, b, false, c)) return;
    // a^T is a column-major rows x depth matrix over a's storage.
    Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::ColMajor, false, T,
                                                   Eigen::RowMajor, false, Eigen::RowMajor,
                                                   1>::run(c.rows(), c.cols(), a.rows(), a.data(),
                                                           a.outerStride(), b.data(),
                                                           b.outerStride(), c.data(), 1,
                                                           c.outerStride(), alpha, *blocking_);
  }

 private:
  using Blocking = Eigen::internal::gemm_blocking_space<Eigen::RowMajor, T, T, Eigen::Dynamic,
                                                        Eigen::Dynamic, Eigen::Dynamic, 1, false>;

  // Float on AVX-512: the register-blocked kernel of the attention tiles on operands packed per
  // call (detail::avx512::add_packed_product), about twice Eigen's kernel here.
  static bool packed_kernel() {
    if constexpr (std::is_same_v<T, float>) return detail::use_avx512();
    return false;
  }

  // c += alpha op(a) op(b) on the packed kernel; false (nothing done) where it does not run.
  // a_transposed: a holds A^T (row-major depth x rows); b_transposed: b holds B^T (cols x depth).
  bool packed_product(T alpha, ConstMatrixRef<T> a, bool a_transposed, ConstMatrixRef<T> b,
                      bool b_transposed, MatrixRef<T> c) {
#if ATTNLENS_HAS_AVX512_KERNELS
    if constexpr (std::is_same_v<T, float>) {
      if (!packed_) return false;
      const Index depth = a_transposed ? a.rows() : a.cols();
      if (c.size() == 0 || depth == 0) return true;
      detail::avx512::add_packed_product(
          c.rows(), c.cols(), depth, alpha, {a.data(), a.outerStride(), a_transposed},
          {b.data(), b.outerStride(), b_transposed}, c.data(), c.outerStride(), *packed_);
      return true;
    }
#endif
    static_cast<void>(alpha), static_cast<void>(a), static_cast<void>(a_transposed);
    static_cast<void>(b), static_cast<void>(b_transposed), static_cast<void>(c);
    return false;
  }

  // The kernel trusts its sizes: a product larger than the buffers would write past them.
  // The product of an a_rows x a_depth and a b_depth x b_cols operand into c.
  void check(Index a_rows, Index a_depth, Index b_depth, Index b_cols, MatrixRef<T> c) const {
    const bool fits = a_rows == c.rows() && b_cols == c.cols() && a_depth == b_depth &&
                      c.rows() <= max_rows_ && c.cols() <= max_cols_ && a_depth <= max_depth_;
    if (!fits)
      throw ShapeError(detail::concat("SerialGemm: product ", a_rows, " x ", a_depth, " * ",
                                      b_depth, " x ", b_cols, " into ", c.rows(), " x ", c.cols(),
                                      " does not fit buffers for ", max_rows_, " x ", max_depth_,
                                      " * ", max_depth_, " x ", max_cols_));
  }

  Index max_rows_, max_cols_, max_depth_;
  Matrix<T> scaled_rows_;  // alpha a, made on the first scaled product
  std::unique_ptr<Blocking> blocking_;
#if ATTNLENS_HAS_AVX512_KERNELS
  std::unique_ptr<detail::avx512::PackedOperands> packed_;  // float on AVX-512 only
#endif
};

namespace detail {

// c = (or +=) a product on the threads of `parallel`, split along the longer side of c into one
// block per thread (at least 32 rows or columns each); multiply(gemm, rows, cols, target) adds
// the product's block [rows] x [cols] (index ranges {begin, count}) to target.
template <class T, class Multiply>
void parallel_blocks(MatrixRef<T> c, Index depth, bool accumulate, const ParallelOptions& parallel,
                     const Multiply& multiply) {
  const bool by_rows = c.rows() >= c.cols();
  const Index extent = by_rows ? c.rows() : c.cols();
  const Index chunks = std::max<Index>(1, std::min<Index>(thread_count(parallel), extent / 32));
  const Index chunk = (extent + chunks - 1) / chunks;
  parallel_for(
      chunks,
      [&](Index part) {
        const Index begin = part * chunk, count = std::min(chunk, extent - begin);
        if (count <= 0) return;
        const std::pair<Index, Index> rows{by_rows ? begin : 0, by_rows ? count : c.rows()};
        const std::pair<Index, Index> cols{by_rows ? 0 : begin, by_rows ? c.cols() : count};
        MatrixRef<T> target = c.block(rows.first, cols.first, rows.second, cols.second);
        if (!accumulate) target.setZero();
        SerialGemm<T> gemm(rows.second, cols.second, depth);
        multiply(gemm, rows, cols, target);
      },
      parallel);
}

}  // namespace detail

// c = a * b^T (+ bias on every row) on the threads of `parallel`, b row-major c.cols() x a.cols()
// (a Linear's weight), bias null or c.cols() entries. Each thread packs its own operands, so the
// product is split along the longer side of c: the operand that every thread must pack in full
// is then the smaller one. The AVX-512 kernel reads b in place (avx512::product_transposed).
template <class T>
void parallel_product_transposed(ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c,
                                 const ParallelOptions& parallel, const T* bias = nullptr) {
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>) {
    if (detail::use_avx512() && a.cols() > 0) {
      detail::avx512::product_transposed(a.data(), a.outerStride(), b.data(), b.outerStride(), bias,
                                         c.rows(), c.cols(), a.cols(), {c.data(), c.outerStride()},
                                         parallel);
      return;
    }
  }
#endif
  detail::parallel_blocks<T>(
      c, a.cols(), bias != nullptr, parallel,
      [&](SerialGemm<T>& gemm, auto rows, auto cols, MatrixRef<T> target) {
        if (bias) target.rowwise() = Eigen::Map<const RowVector<T>>(bias + cols.first, cols.second);
        gemm.add_product_transposed(T(1), a.middleRows(rows.first, rows.second),
                                    b.middleRows(cols.first, cols.second), target);
      });
}

// c = a * b (b row-major, a.cols() x c.cols()) on the threads of `parallel`: dx = dy W of a
// Linear's backward pass.
template <class T>
void parallel_product(ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c,
                      const ParallelOptions& parallel) {
  detail::parallel_blocks<T>(c, a.cols(), false, parallel,
                             [&](SerialGemm<T>& gemm, auto rows, auto cols, MatrixRef<T> target) {
                               gemm.add_product(T(1), a.middleRows(rows.first, rows.second),
                                                b.middleCols(cols.first, cols.second), target);
                             });
}

// c += a^T * b (a row-major n x c.rows(), b row-major n x c.cols()) on the threads of
// `parallel`: dW += dy^T x of a Linear's backward pass.
template <class T>
void parallel_add_transposed_product(ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c,
                                     const ParallelOptions& parallel) {
  detail::parallel_blocks<T>(c, a.rows(), true, parallel,
                             [&](SerialGemm<T>& gemm, auto rows, auto cols, MatrixRef<T> target) {
                               gemm.add_transposed_product(
                                   T(1), a.middleCols(rows.first, rows.second),
                                   b.middleCols(cols.first, cols.second), target);
                             });
}

// The three equal column blocks of a * b^T + bias in three matrices, resized here: parts[s] =
// a * b.middleRows(s n, n)^T + bias.segment(s n, n) with n = b.rows() / 3 (the q, k and v of a
// packed in-projection). The AVX-512 kernel stores its tiles into the parts directly.
template <class T>
void parallel_product_transposed_split3(ConstMatrixRef<T> a, ConstMatrixRef<T> b, const T* bias,
                                        Matrix<T>& part0, Matrix<T>& part1, Matrix<T>& part2,
                                        const ParallelOptions& parallel) {
  const Index n = b.rows() / 3;
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>) {
    if (detail::use_avx512() && a.cols() > 0) {
      for (Matrix<T>* part : {&part0, &part1, &part2}) part->resize(a.rows(), n);
      detail::avx512::Destination parts{nullptr, n, n, {part0.data(), part1.data(), part2.data()}};
      detail::avx512::product_transposed(a.data(), a.outerStride(), b.data(), b.outerStride(), bias,
                                         a.rows(), 3 * n, a.cols(), parts, parallel);
      return;
    }
  }
#endif
  Matrix<T> all(a.rows(), 3 * n);
  parallel_product_transposed<T>(a, b, all, parallel);
  if (bias) all.rowwise() += Eigen::Map<const RowVector<T>>(bias, 3 * n);
  part0 = all.leftCols(n);
  part1 = all.middleCols(n, n);
  part2 = all.rightCols(n);
}

}  // namespace attnlens
