// Serial matrix products on views: Eigen's own blocked GEMM kernel, called without Eigen's
// OpenMP dispatch. A caller that runs single-threaded outside a parallel region would
// otherwise make Eigen fork threads for every small tile product; attnlens decides its own
// threads (DESIGN.md section 6). Packing buffers are allocated once, for the largest product,
// and reused, so the tile loop allocates nothing.
#pragma once

#include <Eigen/Core>
#include <memory>

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

// c = a * b^T (b row-major, c.cols() x a.cols()) on the threads of `parallel`. Each thread
// packs its own operands, so the product is split along the longer side of c: the operand
// that every thread must pack in full is then the smaller one.
template <class T>
void parallel_product_transposed(ConstMatrixRef<T> a, ConstMatrixRef<T> b, MatrixRef<T> c,
                                 const ParallelOptions& parallel) {
  const bool by_rows = c.rows() >= c.cols();
  const Index extent = by_rows ? c.rows() : c.cols();
  const Index chunks = std::max<Index>(1, std::min<Index>(thread_count(parallel), extent / 32));
  const Index chunk = (extent + chunks - 1) / chunks;
  parallel_for(
      chunks,
      [&](Index part) {
        const Index begin = part * chunk, count = std::min(chunk, extent - begin);
        if (count <= 0) return;
        MatrixRef<T> target = by_rows ? MatrixRef<T>(c.middleRows(begin, count))
                                      : MatrixRef<T>(c.middleCols(begin, count));
        SerialGemm<T> gemm(target.rows(), target.cols(), a.cols());
        target.setZero();
        gemm.add_product_transposed(
            T(1), by_rows ? ConstMatrixRef<T>(a.middleRows(begin, count)) : a,
            by_rows ? b : ConstMatrixRef<T>(b.middleRows(begin, count)), target);
      },
      parallel);
}

}  // namespace attnlens
