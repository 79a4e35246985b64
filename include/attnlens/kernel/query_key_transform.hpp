// Query/key transforms: position encodings that act on a head's projected queries and keys
// instead of adding to the scores (RoPE, docs/math.md section 3). An engine applies each transform
// once per (sequence, head), in O(L * d), before any score is formed.
#pragma once

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

}  // namespace attnlens
