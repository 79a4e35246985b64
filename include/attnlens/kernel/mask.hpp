// Typed attention masks: the support of the attention kernel (docs/limits.md). A causal
// flag, a per-key keep vector or per-sequence lengths (key padding), a boolean keep mask and
// an additive float bias over (batch, head, query, key) with broadcasting. Masked entries are
// selected to -inf, never computed with, so NaN or Inf behind a mask cannot leak through.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

// attnlens polarity everywhere: nonzero / true = the key may be attended.
template <class T>
struct AttentionMask {
  // Query i attends key j only when j <= i (top-left aligned, as PyTorch's is_causal).
  bool causal = false;
  // Key padding as a keep vector: shape [S] or [B, S], nonzero = keep.
  std::optional<Tensor<std::uint8_t>> key_keep;
  // Key padding as lengths: sequence b attends keys j < key_lengths[b] only.
  std::optional<std::vector<Index>> key_lengths;
  // Keep mask broadcastable to [B, H, L, S] (e.g. [L, S], [H, L, S], [B, H, L, S]).
  std::optional<Tensor<std::uint8_t>> keep;
  // Additive bias broadcastable to [B, H, L, S]; -inf masks the entry.
  std::optional<Tensor<T>> bias;

  bool empty() const { return !causal && !key_keep && !key_lengths && !keep && !bias; }

  // Whether key j of sequence b survives the key padding (key_keep, key_lengths): a real token.
  // The shapes must have been checked (BoundMask does).
  bool keeps_key(Index b, Index j) const {
    if (key_lengths && j >= (*key_lengths)[static_cast<std::size_t>(b)]) return false;
    if (key_keep)
      return key_keep->data()[key_keep->rank() == 1 ? j : b * key_keep->dim(1) + j] != 0;
    return true;
  }
};

// PyTorch's boolean masks say True = "not allowed"; attnlens keeps the opposite.
inline Tensor<std::uint8_t> keep_from_torch_mask(const Tensor<std::uint8_t>& not_allowed) {
  Tensor<std::uint8_t> keep(not_allowed.shape());
  for (Index i = 0; i < keep.size(); ++i) keep.data()[i] = not_allowed.data()[i] ? 0 : 1;
  return keep;
}

namespace detail {

// Strides that map (b, h, i, j) into a tensor broadcastable to [B, H, L, S] (stride 0 on a
// broadcast axis). Built and checked once per call.
class Broadcast4 {
 public:
  Broadcast4(const Shape& shape, const ScoreShape& target, const char* what) {
    const std::array<Index, 4> full{target.batch, target.heads, target.queries, target.keys};
    if (shape.size() < 2 || shape.size() > 4)
      throw ShapeError(concat(what, ": expected rank 2 to 4 broadcastable to ",
                              shape_string(std::vector<Index>(full.begin(), full.end())), ", got ",
                              shape_string(shape)));
    const std::size_t offset = 4 - shape.size();
    Index stride = 1;
    for (std::size_t axis = 4; axis-- > 0;) {
      const Index extent = axis >= offset ? shape[axis - offset] : 1;
      if (extent != full[axis] && extent != 1)
        throw ShapeError(concat(what, ": expected a shape broadcastable to ",
                                shape_string(std::vector<Index>(full.begin(), full.end())),
                                ", got ", shape_string(shape)));
      strides_[axis] = extent == 1 ? 0 : stride;
      stride *= extent;
    }
  }
  Index offset(Index b, Index h, Index i, Index j) const {
    return b * strides_[0] + h * strides_[1] + i * strides_[2] + j * strides_[3];
  }

 private:
  std::array<Index, 4> strides_{};
};

}  // namespace detail

// The mask, checked against one problem shape, applied tile by tile.
template <class T>
class BoundMask {
 public:
  BoundMask(const AttentionMask<T>& mask, const ScoreShape& shape)
      : mask_(mask),
        shape_(shape),
        keep_(mask.keep ? std::optional<detail::Broadcast4>(std::in_place, mask.keep->shape(),
                                                            shape, "mask.keep")
                        : std::nullopt),
        bias_(mask.bias ? std::optional<detail::Broadcast4>(std::in_place, mask.bias->shape(),
                                                            shape, "mask.bias")
                        : std::nullopt) {
    if (mask.key_keep) {
      const Shape& s = mask.key_keep->shape();
      const bool ok = (s.size() == 1 && s[0] == shape.keys) ||
                      (s.size() == 2 && s[0] == shape.batch && s[1] == shape.keys);
      detail::require_shape(
          ok, "mask.key_keep",
          detail::concat("[", shape.keys, "] or [", shape.batch, ", ", shape.keys, "]"),
          detail::shape_string(s));
      key_keep_batch_stride_ = s.size() == 2 ? shape.keys : 0;
    }
    if (mask.key_lengths) {
      const auto& lengths = *mask.key_lengths;
      detail::require_shape(static_cast<Index>(lengths.size()) == shape.batch, "mask.key_lengths",
                            detail::concat(shape.batch, " lengths"),
                            detail::concat(lengths.size(), " lengths"));
      for (std::size_t b = 0; b < lengths.size(); ++b)
        detail::require_argument(lengths[b] >= 0 && lengths[b] <= shape.keys,
                                 detail::concat("mask.key_lengths[", b, "]"),
                                 detail::concat("0..", shape.keys), lengths[b]);
    }
  }

  // Keys at or past this index are masked for every query in [0, query_end) of sequence b;
  // an engine may skip them.
  Index key_end(Index batch, Index query_end) const {
    Index end = shape_.keys;
    if (mask_.causal) end = std::min(end, query_end);
    if (mask_.key_lengths)
      end = std::min(end, (*mask_.key_lengths)[static_cast<std::size_t>(batch)]);
    return end;
  }

  // Adds the bias and sets every masked entry of the tile to -inf.
  void apply(const TileCoords& at, MatrixRef<T> scores) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const Index rows = scores.rows(), cols = scores.cols();
    if (bias_) {
      const T* bias = mask_.bias->data();
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c) {
          const T b = bias[bias_->offset(at.batch, at.head, at.query_begin + r, at.key_begin + c)];
          scores(r, c) = b == neg_inf ? neg_inf : scores(r, c) + b;
        }
    }
    if (keep_) {
      const std::uint8_t* keep = mask_.keep->data();
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c)
          if (!keep[keep_->offset(at.batch, at.head, at.query_begin + r, at.key_begin + c)])
            scores(r, c) = neg_inf;
    }
    if (mask_.key_keep) {
      const std::uint8_t* keep = mask_.key_keep->data() + at.batch * key_keep_batch_stride_;
      for (Index c = 0; c < cols; ++c)
        if (!keep[at.key_begin + c]) scores.col(c).setConstant(neg_inf);
    }
    if (mask_.key_lengths) {
      const Index length = (*mask_.key_lengths)[static_cast<std::size_t>(at.batch)];
      const Index first_masked = std::clamp<Index>(length - at.key_begin, 0, cols);
      scores.rightCols(cols - first_masked).setConstant(neg_inf);
    }
    if (mask_.causal) {
      for (Index r = 0; r < rows; ++r) {
        const Index first_masked =
            std::clamp<Index>(at.query_begin + r + 1 - at.key_begin, 0, cols);
        scores.row(r).tail(cols - first_masked).setConstant(neg_inf);
      }
    }
  }

 private:
  const AttentionMask<T>& mask_;
  ScoreShape shape_;
  std::optional<detail::Broadcast4> keep_;
  std::optional<detail::Broadcast4> bias_;
  Index key_keep_batch_stride_ = 0;
};

}  // namespace attnlens
