// The query/key transform extension point of MultiHeadAttention: a transform sees each head's
// projected queries and keys once, and changes the scores the way changing the projection
// would.
#include <gtest/gtest.h>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/kernel/query_key_transform.hpp"
#include "support/fixtures.hpp"

namespace attnlens {
namespace {

// Scales the queries of one head: the same as scaling that head's rows of W_q and b_q.
class ScaleHeadQueries final : public QueryKeyTransform<double> {
 public:
  ScaleHeadQueries(Index head, double factor) : head_(head), factor_(factor) {}
  void check(const ScoreShape& shape) const override {
    detail::require_argument(head_ < shape.heads, "ScaleHeadQueries head",
                             detail::concat("< ", shape.heads), head_);
  }
  void transform_queries(const RowCoords& at, MatrixRef<double> queries) const override {
    if (at.head == head_) queries *= factor_;
  }
  void transform_keys(const RowCoords&, MatrixRef<double>) const override {}
  void backward_queries(const RowCoords& at, ConstMatrixRef<double>, MatrixRef<double> dqueries,
                        KernelFactor<double>*) const override {
    if (at.head == head_) dqueries *= factor_;
  }
  void backward_keys(const RowCoords&, ConstMatrixRef<double>, MatrixRef<double>,
                     KernelFactor<double>*) const override {}

 private:
  Index head_;
  double factor_;
};

TEST(QueryKeyTransform, ActsLikeTheProjectionItReplaces) {
  Rng rng(21);
  MultiHeadAttention<double> mha({8, 2}, rng);
  for (Index i = 0; i < mha.in_proj_bias.size(); ++i) mha.in_proj_bias[i] = rng.normal<double>();
  Tensor<double> x({2, 5, 8});
  for (auto& v : x.storage()) v = rng.normal<double>();
  MultiHeadAttention<double> scaled = mha;
  scaled.in_proj_weight.middleRows(4, 4) *= 3.0;  // head 1 of W_q
  scaled.in_proj_bias.segment(4, 4) *= 3.0;
  const auto expected = scaled.forward(x).output;
  const auto plain = mha.forward(x).output;
  mha.query_key_transforms.push_back(std::make_shared<ScaleHeadQueries>(1, 3.0));
  MultiHeadCache<double> cache;
  const auto transformed = mha.forward(x, {}, {}, &cache).output;
  ATTNLENS_EXPECT_CLOSE(transformed, expected, 1e-12);
  EXPECT_GT(testing::max_abs_error(transformed, plain), 1e-3);
  // The cache holds the transformed queries, which is what the scores were made of.
  MultiHeadCache<double> scaled_cache;
  (void)scaled.forward(x, {}, {}, &scaled_cache);
  ATTNLENS_EXPECT_CLOSE(cache.queries, scaled_cache.queries, 1e-12);
  // check() runs before any work.
  mha.query_key_transforms.push_back(std::make_shared<ScaleHeadQueries>(2, 3.0));
  EXPECT_THROW((void)mha.forward(x), ArgumentError);
}

}  // namespace
}  // namespace attnlens
