// Tensor<T>: an owning N-d array (shape + contiguous row-major storage) for data at the API
// boundary: batches B x L x E, per-head weights B x H x L x S, safetensors entries. The math
// happens on Eigen maps of its trailing two axes, never on the tensor itself.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnlens/core/aligned_allocator.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

using Shape = std::vector<Index>;

namespace detail {

// Product of the extents, checked for negative extents and overflow.
inline Index shape_size(const Shape& shape, const char* what = "shape") {
  Index n = 1;
  for (Index extent : shape) {
    if (extent < 0)
      throw ShapeError(concat(what, ": expected non-negative extents, got ", shape_string(shape)));
    if (extent != 0 && n > std::numeric_limits<Index>::max() / extent)
      throw ShapeError(concat(what, ": element count overflows, shape ", shape_string(shape)));
    n *= extent;
  }
  return n;
}

}  // namespace detail

template <class T>
class Tensor {
  static_assert(!std::is_same_v<T, bool>, "use Tensor<std::uint8_t> for boolean data");

 public:
  // At a 64-byte boundary, so that a computation rounds the same way wherever the allocator
  // puts it (core/aligned_allocator.hpp).
  using Storage = AlignedVector<T>;

  Tensor() = default;

  // Zero-filled tensor of the given shape.
  explicit Tensor(Shape shape)
      : shape_(std::move(shape)), data_(static_cast<std::size_t>(detail::shape_size(shape_))) {}

  Tensor(Shape shape, Storage data) : shape_(std::move(shape)), data_(std::move(data)) {
    check_storage_size();
  }
  // Copies data held elsewhere (a std::vector) into aligned storage. A template, so that a
  // braced list of values goes to the constructor above.
  template <class Allocator,
            class = std::enable_if_t<!std::is_same_v<std::vector<T, Allocator>, Storage>>>
  Tensor(Shape shape, const std::vector<T, Allocator>& data)
      : shape_(std::move(shape)), data_(data.begin(), data.end()) {
    check_storage_size();
  }

  // A rank-2 tensor holding a copy of m.
  template <class Derived>
  static Tensor from_matrix(const Eigen::MatrixBase<Derived>& m) {
    Tensor t({m.rows(), m.cols()});
    t.matrix() = m;
    return t;
  }

  const Shape& shape() const { return shape_; }
  Index rank() const { return static_cast<Index>(shape_.size()); }
  Index dim(Index axis) const {
    if (axis < 0 || axis >= rank())
      throw ArgumentError(
          detail::concat("Tensor::dim axis: expected 0..", rank() - 1, ", got ", axis));
    return shape_[static_cast<std::size_t>(axis)];
  }
  Index size() const { return static_cast<Index>(data_.size()); }
  bool empty() const { return data_.empty(); }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  Storage& storage() { return data_; }
  const Storage& storage() const { return data_; }

  // Element access by full index, bounds-checked.
  T& at(std::initializer_list<Index> index) { return data_[offset(index)]; }
  const T& at(std::initializer_list<Index> index) const { return data_[offset(index)]; }

  // The matrix formed by the last two axes at the given leading index (rank >= 2), or the
  // whole tensor as one row (rank 1). For B x L x E, matrix({b}) is sequence b as L x E.
  MatrixMap<T> matrix(std::initializer_list<Index> leading = {}) {
    const auto [rows, cols, start] = slice(leading);
    return MatrixMap<T>(data_.data() + start, rows, cols);
  }
  ConstMatrixMap<T> matrix(std::initializer_list<Index> leading = {}) const {
    const auto [rows, cols, start] = slice(leading);
    return ConstMatrixMap<T>(data_.data() + start, rows, cols);
  }

  // The same data under another shape with the same element count.
  Tensor reshaped(Shape shape) const& { return Tensor(std::move(shape), data_); }
  Tensor reshaped(Shape shape) && { return Tensor(std::move(shape), std::move(data_)); }

  template <class U>
  Tensor<U> cast() const {
    typename Tensor<U>::Storage out(data_.size());
    for (std::size_t i = 0; i < data_.size(); ++i) out[i] = static_cast<U>(data_[i]);
    return Tensor<U>(shape_, std::move(out));
  }

  friend bool operator==(const Tensor& a, const Tensor& b) {
    return a.shape_ == b.shape_ && a.data_ == b.data_;
  }

 private:
  struct Slice {
    Index rows, cols, start;
  };

  std::size_t offset(std::initializer_list<Index> index) const {
    if (static_cast<Index>(index.size()) != rank())
      throw ArgumentError(
          detail::concat("Tensor::at index: expected ", rank(), " indices, got ", index.size()));
    return static_cast<std::size_t>(flat_index(index, "Tensor::at index "));
  }

  // The row-major position of the leading indices among the first index.size() axes, each
  // checked against its extent; `what` names them in the error.
  Index flat_index(std::initializer_list<Index> index, const char* what) const {
    Index flat = 0;
    std::size_t axis = 0;
    for (Index i : index) {
      if (i < 0 || i >= shape_[axis])
        throw ArgumentError(
            detail::concat(what, axis, ": expected 0..", shape_[axis] - 1, ", got ", i));
      flat = flat * shape_[axis] + i;
      ++axis;
    }
    return flat;
  }

  Slice slice(std::initializer_list<Index> leading) const {
    if (rank() == 1 && leading.size() == 0) return {1, shape_[0], 0};
    const Index lead = static_cast<Index>(leading.size());
    if (rank() < 2 || lead != rank() - 2)
      throw ArgumentError(detail::concat("Tensor::matrix: expected ", rank() < 2 ? 0 : rank() - 2,
                                         " leading indices for shape ",
                                         detail::shape_string(shape_), ", got ", lead));
    const Index flat = flat_index(leading, "Tensor::matrix index ");
    const auto axis = leading.size();
    const Index rows = shape_[axis], cols = shape_[axis + 1];
    return {rows, cols, flat * rows * cols};
  }

  void check_storage_size() const {
    const Index n = detail::shape_size(shape_);
    if (static_cast<Index>(data_.size()) != n)
      throw ShapeError(detail::concat("Tensor data: expected ", n, " elements for shape ",
                                      detail::shape_string(shape_), ", got ", data_.size()));
  }

  Shape shape_;
  Storage data_;
};

}  // namespace attnlens
