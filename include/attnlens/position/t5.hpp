// T5 relative position bias (Raffel et al. 2020, docs/math.md section 3): S_h(i,j) +=
// b_h[bucket(j-i)] with HF transformers' _relative_position_bucket (bidirectional or causal; exact
// buckets near 0, logarithmic ones up to max_distance) and a learned num_buckets x H table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

struct T5BiasOptions {
  Index num_heads = 1;
  Index num_buckets = 32;
  Index max_distance = 128;
  bool bidirectional = true;  // false: the causal (decoder) buckets, one per distance back
};

namespace detail {

inline void check_t5_options(const T5BiasOptions& o) {
  require_argument(o.num_heads > 0, "T5BiasOptions::num_heads", "> 0", o.num_heads);
  // Half the buckets of each sign are exact: at least one must be, or the log divides by 0.
  const Index exact = (o.bidirectional ? o.num_buckets / 2 : o.num_buckets) / 2;
  require_argument(exact >= 1, "T5BiasOptions::num_buckets",
                   o.bidirectional ? ">= 4 (bidirectional)" : ">= 2 (causal)", o.num_buckets);
  require_argument(o.max_distance > exact, "T5BiasOptions::max_distance",
                   concat("> ", exact, " (the exact buckets)"), o.max_distance);
}

}  // namespace detail

// HF's _relative_position_bucket for relative_position = j - i (key minus query), in
// float32 arithmetic as HF computes it, so that bucket edges fall where they fall there.
inline Index t5_relative_position_bucket(Index relative_position, const T5BiasOptions& options) {
  detail::check_t5_options(options);
  Index buckets = options.num_buckets;
  Index bucket = 0;
  Index distance = 0;
  if (options.bidirectional) {
    buckets /= 2;
    if (relative_position > 0) bucket += buckets;
    distance = std::abs(relative_position);
  } else {
    distance = -std::min<Index>(relative_position, 0);
  }
  const Index max_exact = buckets / 2;
  if (distance < max_exact) return bucket + distance;
  const float log_ratio = std::log(static_cast<float>(distance) / static_cast<float>(max_exact));
  const float log_range = static_cast<float>(
      std::log(static_cast<double>(options.max_distance) / static_cast<double>(max_exact)));
  const auto large = max_exact + static_cast<Index>(log_ratio / log_range *
                                                    static_cast<float>(buckets - max_exact));
  return bucket + std::min(large, buckets - 1);
}

template <class T>
class T5RelativeBias final : public ScoreTerm<T> {
 public:
  // The table N(0, 1), as nn.Embedding.
  void reset_parameters(Rng& rng) override { init::normal(relative_attention_bias, rng); }
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<T5RelativeBias>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "relative_attention_bias.weight", relative_attention_bias);
  }

  // A zero table of the right shape: load relative_attention_bias.weight into it.
  explicit T5RelativeBias(const T5BiasOptions& options)
      : relative_attention_bias(Matrix<T>::Zero(checked(options).num_buckets, options.num_heads)),
        options_(options) {
    // Beyond max_distance every offset of a sign shares the last bucket of that sign, so the
    // table needs no more than max_distance offsets a side, and no more than k_table_reach:
    // only a max_distance beyond it, on a sequence longer than it, computes buckets.
    reach_ = std::min(options.max_distance, k_table_reach);
    for (Index offset = -reach_; offset <= reach_; ++offset)
      buckets_.push_back(t5_relative_position_bucket(offset, options));
  }

  const T5BiasOptions& options() const { return options_; }
  Index bucket(Index relative_position) const {
    const Index limit = options_.max_distance;
    const Index offset = std::clamp(relative_position, -limit, limit);
    if (offset < -reach_ || offset > reach_) return t5_relative_position_bucket(offset, options_);
    return buckets_[static_cast<std::size_t>(offset + reach_)];
  }

  void check(const ScoreShape& shape) const override {
    detail::require_matrix(relative_attention_bias, options_.num_buckets, shape.heads,
                           "relative_attention_bias (num_buckets x heads)");
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const auto table = relative_attention_bias.col(tile.at.head);
    for (Index r = 0; r < scores.rows(); ++r) {
      const Index i = tile.at.query_begin + r;
      for (Index c = 0; c < scores.cols(); ++c)
        scores(r, c) += table[bucket(tile.at.key_begin + c - i)];
    }
  }

  // Each table entry gathers the score gradients of the offsets in its bucket.
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    auto* into = detail::gradient_as<T5RelativeBias>(gradient.parameters);
    if (!into) return;
    auto table = into->relative_attention_bias.col(tile.at.head);
    for (Index r = 0; r < dscores.rows(); ++r) {
      const Index i = tile.at.query_begin + r;
      for (Index c = 0; c < dscores.cols(); ++c)
        table[bucket(tile.at.key_begin + c - i)] += dscores(r, c);
    }
  }

  // nn.Embedding(num_buckets, H).weight, HF's relative_attention_bias.weight.
  Matrix<T> relative_attention_bias;

 private:
  static constexpr Index k_table_reach = 1 << 16;

  // The options, checked before the table is allocated from them.
  static const T5BiasOptions& checked(const T5BiasOptions& options) {
    detail::check_t5_options(options);
    return options;
  }

  T5BiasOptions options_;
  Index reach_ = 0;             // min(max_distance, k_table_reach)
  std::vector<Index> buckets_;  // bucket of offsets -reach_ .. reach_
};

}  // namespace attnlens
