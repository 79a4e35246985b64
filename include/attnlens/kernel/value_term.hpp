// Value terms: position encodings that add to the values an attention row averages (Shaw et
// al.'s a^V, docs/math.md section 3). A term is linear in the weights, out += f(weights), so an
// online-softmax engine can apply it to unnormalized tiles and rescale like A V itself.
#pragma once

#include <memory>
#include <vector>

#include "attnlens/core/types.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

template <class T>
class ValueTerm : public virtual KernelFactor<T> {
 public:
  // Throws ShapeError / ArgumentError when the term cannot serve a problem of this shape
  // with value heads of width value_dim.
  virtual void check(const ScoreShape& shape, Index value_dim) const = 0;
  // out(r, :) += sum_c weights(r, c) * a(batch, head, query_begin + r, key_begin + c, :),
  // for a tile of weights (rows x cols) and its rows of the head's output (rows x dv).
  virtual void add(const TileCoords& at, ConstMatrixRef<T> weights, MatrixRef<T> out) const = 0;
  // The backward of add, given dout = dL/dout for the tile's rows (rows x dv):
  // dweights(r, c) += dout(r, :) . a(.., r, c, :), and += dL/da into `parameters`, a factor of
  // the term's own type (null: not wanted).
  virtual void add_backward(const TileCoords& at, ConstMatrixRef<T> weights, ConstMatrixRef<T> dout,
                            MatrixRef<T> dweights, KernelFactor<T>* parameters) const = 0;
};

template <class T>
using ValueTerms = std::vector<std::shared_ptr<ValueTerm<T>>>;

}  // namespace attnlens
