// Query/key transforms: position encodings that act on a head's projected queries and keys
// instead of adding to the scores (RoPE, docs/math.md section 3). An engine applies each transform
// once per (sequence, head), in O(L * d), before any score is formed.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "attnlens/core/types.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

// Where a block of rows sits: row r of the block is token `first_position + r` of head `head`
// of sequence `batch`. Positions count from 0 for queries and keys alike.
struct RowCoords {
  Index batch = 0;
  Index head = 0;
  Index first_position = 0;
};

template <class T>
class QueryKeyTransform : public virtual KernelFactor<T> {
 public:
  // Throws ShapeError / ArgumentError when the transform cannot serve a problem of this shape
  // (shape.head_dim is the width of the rows it will transform).
  virtual void check(const ScoreShape& shape) const = 0;
  // In place on a block of one head's queries (rows x d) or keys. Blocks may be any
  // contiguous range of tokens, so a tiled engine can transform a tile at a time.
  virtual void transform_queries(const RowCoords& at, MatrixRef<T> queries) const = 0;
  virtual void transform_keys(const RowCoords& at, MatrixRef<T> keys) const = 0;
  // The backward of transform_queries / transform_keys: `queries` are the block as the forward
  // step received it (before the transform), and `dqueries` turns in place from dL/d(after) into
  // dL/d(before). Parameter gradients go into `parameters`, a factor of the transform's own type
  // (null: not wanted).
  virtual void backward_queries(const RowCoords& at, ConstMatrixRef<T> queries,
                                MatrixRef<T> dqueries, KernelFactor<T>* parameters) const = 0;
  virtual void backward_keys(const RowCoords& at, ConstMatrixRef<T> keys, MatrixRef<T> dkeys,
                             KernelFactor<T>* parameters) const = 0;
};

template <class T>
using QueryKeyTransforms = std::vector<std::shared_ptr<QueryKeyTransform<T>>>;

// Applies every transform, in order, to one head's queries and keys (all rows from 0).
template <class T>
void apply_query_key_transforms(const QueryKeyTransforms<T>& transforms, Index batch, Index head,
                                MatrixRef<T> queries, MatrixRef<T> keys) {
  const RowCoords at{batch, head, 0};
  for (const auto& transform : transforms) {
    transform->transform_queries(at, queries);
    transform->transform_keys(at, keys);
  }
}

// The backward of apply_query_key_transforms: q and k are the head's rows before every
// transform, dq and dk turn in place from dL/d(after all) into dL/d(before). The intermediate
// inputs are recomputed, transform by transform (O(L d) each). gradients[t] receives the
// parameter gradients of transforms[t] (the list may be empty: none wanted).
template <class T>
void apply_query_key_transforms_backward(const QueryKeyTransforms<T>& transforms, Index batch,
                                         Index head, ConstMatrixRef<T> queries,
                                         ConstMatrixRef<T> keys, MatrixRef<T> dqueries,
                                         MatrixRef<T> dkeys,
                                         const std::vector<KernelFactor<T>*>& gradients = {}) {
  const RowCoords at{batch, head, 0};
  // inputs[t] = what transform t received; the first is the head's rows themselves.
  std::vector<Matrix<T>> query_inputs(transforms.size()), key_inputs(transforms.size());
  for (std::size_t t = 0; t < transforms.size(); ++t) {
    query_inputs[t] = t == 0 ? Matrix<T>(queries) : query_inputs[t - 1];
    key_inputs[t] = t == 0 ? Matrix<T>(keys) : key_inputs[t - 1];
    if (t == 0) continue;
    transforms[t - 1]->transform_queries(at, query_inputs[t]);
    transforms[t - 1]->transform_keys(at, key_inputs[t]);
  }
  for (std::size_t t = transforms.size(); t-- > 0;) {
    KernelFactor<T>* gradient = gradients.empty() ? nullptr : gradients[t];
    transforms[t]->backward_queries(at, query_inputs[t], dqueries, gradient);
    transforms[t]->backward_keys(at, key_inputs[t], dkeys, gradient);
  }
}

}  // namespace attnlens
