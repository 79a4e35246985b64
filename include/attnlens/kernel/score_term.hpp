// Score terms: the domain kernels of attention in log space (docs/architecture.md). A term adds
// b_h(i, j) to a tile of scores before the softmax; any engine, materialized or tiled, calls
// it tile by tile, so no term ever needs the whole L x S matrix.
#pragma once

#include <memory>
#include <vector>

#include "attnlens/core/types.hpp"
#include "attnlens/kernel/factor.hpp"

namespace attnlens {

// The extents of one attention problem: B sequences, H heads, L queries, S keys.
struct ScoreShape {
  Index batch = 1;
  Index heads = 1;
  Index queries = 0;
  Index keys = 0;
  Index head_dim = 0;  // width d of a query/key head; 0 where the caller has no heads
};

// Where a tile of scores sits: tile entry (r, c) is query i = query_begin + r and key
// j = key_begin + c of head `head` of sequence `batch`.
struct TileCoords {
  Index batch = 0;
  Index head = 0;
  Index query_begin = 0;
  Index key_begin = 0;
};

// A tile with the head's projected queries and keys for its rows and columns, for terms that
// depend on content as well as position (Shaw, Transformer-XL).
template <class T>
struct ScoreTile {
  TileCoords at;
  ConstMatrixRef<T> queries;  // tile rows x d
  ConstMatrixRef<T> keys;     // tile cols x d
};

// Where the backward of a score term puts what it differentiates, for one tile: += dL/dq_i for
// its rows and dL/dk_j for its columns (terms that read the content: Shaw, Transformer-XL),
// and += dL/dtheta into `parameters`, a factor of the term's own type (null: not wanted).
template <class T>
struct ScoreTileGradient {
  MatrixRef<T> queries;  // tile rows x d
  MatrixRef<T> keys;     // tile cols x d
  KernelFactor<T>* parameters = nullptr;
};

template <class T>
class ScoreTerm : public virtual KernelFactor<T> {
 public:
  // Throws ShapeError / ArgumentError when the term cannot serve a problem of this shape.
  virtual void check(const ScoreShape& shape) const = 0;
  // scores(r, c) += b(batch, head, query_begin + r, key_begin + c).
  virtual void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const = 0;
  // The backward of add: dscores = dL/dscores on the tile (exactly 0 outside the support).
  virtual void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                            ScoreTileGradient<T>& gradient) const = 0;
};

template <class T>
using ScoreTerms = std::vector<std::shared_ptr<ScoreTerm<T>>>;

}  // namespace attnlens
