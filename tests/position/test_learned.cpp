// The learned absolute table against nn.Embedding(arange(L)) + x.
#include <gtest/gtest.h>

#include "attnlens/position/learned.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

template <class T>
class LearnedTest : public ::testing::Test {};
TYPED_TEST_SUITE(LearnedTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(LearnedTest, AddsTheTableLikeEmbedding) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  LearnedPositionalEmbedding<T> positions({10, 8});
  positions.weight = file.get<T>("learned.weight").matrix();
  Tensor<T> x = file.get<T>("learned.x");
  positions.add_to(x);
  ATTNLENS_EXPECT_CLOSE(x, file.get<T>("learned.output"), testing::default_tolerance<T>());
}

TEST(Learned, BadArgumentsNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { LearnedPositionalEmbedding<float>({0, 4}); }, "max_len");
  expect_error_naming<ArgumentError>(
      [] {
        LearnedPositionalEmbedding<float>({4, 0});
      },
      "embed_dim");
  const LearnedPositionalEmbedding<float> positions({4, 8});
  Tensor<float> too_long({1, 5, 8});
  expect_error_naming<ShapeError>([&] { positions.add_to(too_long); }, "position table");
}

}  // namespace
}  // namespace attnlens
