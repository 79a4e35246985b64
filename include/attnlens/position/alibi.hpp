// ALiBi (Press et al. 2022, docs/math.md section 3): a per-head linear distance penalty added to
// the scores, S_h(i,j) += -m_h |i - j| (symmetric) or m_h (j - i) (causal form, to be used
// with a causal mask), with the published slopes m_h.
#pragma once

#include <cmath>
#include <cstdlib>
#include <memory>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

struct AlibiOptions {
  Index num_heads = 1;
  bool causal = false;  // m_h (j - i) instead of -m_h |i - j|
};

// Press et al.'s slopes: 2^(-8h/H), h = 1..H, for H a power of two; otherwise the slopes for
// the largest power of two n below H, then every other slope of the 2n sequence.
template <class T>
Vector<T> alibi_slopes(Index num_heads) {
  detail::require_argument(num_heads > 0, "alibi_slopes num_heads", "> 0", num_heads);
  Index power = 1;
  while (power * 2 <= num_heads) power *= 2;
  Vector<T> slopes(num_heads);
  for (Index h = 0; h < power; ++h)
    slopes[h] = static_cast<T>(std::exp2(-8.0 * static_cast<double>(h + 1) / power));
  for (Index h = power; h < num_heads; ++h)  // slopes 1, 3, 5, ... of the 2n sequence
    slopes[h] = static_cast<T>(std::exp2(-8.0 * static_cast<double>(2 * (h - power) + 1) /
                                         static_cast<double>(2 * power)));
  return slopes;
}

template <class T>
class Alibi final : public ScoreTerm<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override { return std::make_shared<Alibi>(*this); }

  explicit Alibi(const AlibiOptions& options)
      : slopes(alibi_slopes<T>(options.num_heads)), causal_(options.causal) {}

  bool causal() const { return causal_; }

  void check(const ScoreShape& shape) const override {
    detail::require_shape(slopes.size() == shape.heads, "Alibi slopes",
                          detail::concat(shape.heads, " (one per head)"),
                          detail::concat(slopes.size()));
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const T slope = slopes[tile.at.head];
    for (Index r = 0; r < scores.rows(); ++r) {
      const Index i = tile.at.query_begin + r;
      for (Index c = 0; c < scores.cols(); ++c) {
        const Index offset = tile.at.key_begin + c - i;
        scores(r, c) +=
            causal_ ? slope * static_cast<T>(offset) : -slope * static_cast<T>(std::abs(offset));
      }
    }
  }

  // The slopes are fixed (Press et al. do not learn them) and the term reads no content:
  // nothing to differentiate.
  void add_backward(const ScoreTile<T>&, ConstMatrixRef<T>, ScoreTileGradient<T>&) const override {}

  Vector<T> slopes;  // m_h, one per head

 private:
  bool causal_;
};

}  // namespace attnlens
