// Rotary position embedding (Su et al. 2021, docs/math.md section 3): each pair of a head's query
// and key channels is rotated by p * theta_c, theta_c = base^(-2c/d), so that
// rot(q, p_i).rot(k, p_j) depends on p_j - p_i only. Both pairings: interleaved (2c, 2c+1;
// RoFormer, GPT-J) and half (c, c + d/2; GPT-NeoX, Llama).
#pragma once

#include <cmath>
#include <memory>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/query_key_transform.hpp"

namespace attnlens {

enum class RopePairing { interleaved, half };

inline constexpr Named<RopePairing> k_rope_pairing_names[] = {
    {RopePairing::interleaved, "interleaved"}, {RopePairing::half, "half"}};

struct RopeOptions {
  Index head_dim = 0;  // even
  double base = 10000.0;
  RopePairing pairing = RopePairing::interleaved;
};

template <class T>
class RotaryEmbedding final : public QueryKeyTransform<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<RotaryEmbedding>(*this);
  }

  explicit RotaryEmbedding(const RopeOptions& options) : options_(options) {
    detail::require_argument(options.head_dim > 0 && options.head_dim % 2 == 0,
                             "RopeOptions::head_dim", "a positive even number", options.head_dim);
    detail::require_argument(options.base > 1.0, "RopeOptions::base", "> 1", options.base);
    for (Index c = 0; c < options.head_dim / 2; ++c)
      frequencies_.push_back(std::pow(
          options.base, -static_cast<double>(2 * c) / static_cast<double>(options.head_dim)));
  }

  const RopeOptions& options() const { return options_; }

  // theta_c = base^(-2c/d), c = 0 .. d/2 - 1 (HF's inv_freq), in double.
  double frequency(Index pair) const { return frequencies_[static_cast<std::size_t>(pair)]; }

  // Rotates row r of `rows` (n x d) by the angles of position first_position + r (by their
  // negatives when `inverse`: the rotation is orthogonal, so that is the backward pass). Angles
  // are formed in double and their cos and sin rounded once to T.
  void rotate(Index first_position, MatrixRef<T> rows, bool inverse = false) const {
    const Index pairs = options_.head_dim / 2;
    const bool interleaved = options_.pairing == RopePairing::interleaved;
    for (Index r = 0; r < rows.rows(); ++r) {
      const double position = static_cast<double>(first_position + r);
      for (Index c = 0; c < pairs; ++c) {
        const double angle = position * frequency(c);
        const T cos = static_cast<T>(std::cos(angle));
        const T sin = static_cast<T>(inverse ? -std::sin(angle) : std::sin(angle));
        const Index a = interleaved ? 2 * c : c, b = interleaved ? 2 * c + 1 : c + pairs;
        const T x = rows(r, a), y = rows(r, b);
        rows(r, a) = x * cos - y * sin;
        rows(r, b) = x * sin + y * cos;
      }
    }
  }

  void check(const ScoreShape& shape) const override {
    detail::require_argument(shape.head_dim == options_.head_dim, "RotaryEmbedding head_dim",
                             detail::concat(options_.head_dim, " (RopeOptions::head_dim)"),
                             shape.head_dim);
  }
  void transform_queries(const RowCoords& at, MatrixRef<T> queries) const override {
    rotate(at.first_position, queries);
  }
  void transform_keys(const RowCoords& at, MatrixRef<T> keys) const override {
    rotate(at.first_position, keys);
  }
  // No parameters: the gradient rotates back.
  void backward_queries(const RowCoords& at, ConstMatrixRef<T>, MatrixRef<T> dqueries,
                        KernelFactor<T>*) const override {
    rotate(at.first_position, dqueries, true);
  }
  void backward_keys(const RowCoords& at, ConstMatrixRef<T>, MatrixRef<T> dkeys,
                     KernelFactor<T>*) const override {
    rotate(at.first_position, dkeys, true);
  }

 private:
  RopeOptions options_;
  std::vector<double> frequencies_;
};

}  // namespace attnlens
