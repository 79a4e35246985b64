// T5 relative bias: the bucket function against HF's _relative_position_bucket (as written in
// transformers, run in the PyTorch oracle) and the bias against T5Attention.compute_bias.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/position/t5.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

using testing::term_bias;

TEST(T5RelativeBias, BucketsMatchHuggingFaceForEveryOffset) {
  const auto file = testing::load_fixture("positions_f64.safetensors");
  for (const auto& [buckets, distance] :
       {std::pair<Index, Index>{32, 128}, {16, 20}, {8, 16}, {10, 50}})
    for (const bool bidirectional : {true, false}) {
      const std::string name = "t5.buckets_" + std::string(bidirectional ? "bi" : "causal") + "_" +
                               std::to_string(buckets) + "_" + std::to_string(distance);
      SCOPED_TRACE(name);
      const Tensor<std::int64_t> expected = file.get<std::int64_t>(name);
      const T5BiasOptions options{1, buckets, distance, bidirectional};
      const T5RelativeBias<double> term(options);
      for (Index offset = -300; offset <= 300; ++offset) {
        const auto want = expected.data()[offset + 300];
        ASSERT_EQ(t5_relative_position_bucket(offset, options), want) << offset;
        ASSERT_EQ(term.bucket(offset), want) << offset;
      }
    }
}

TEST(T5RelativeBias, FarOffsetsAreComputedNotTabulated) {
  // max_distance 1e12 once built a table of 2e12 + 1 buckets (1e8 took 105 s and 2 GB); now
  // offsets beyond the table's reach (2^16) are computed, with the same buckets as HF.
  for (const Index distance : {Index(128), Index(1) << 20, Index(1'000'000'000'000)})
    for (const bool bidirectional : {true, false}) {
      const T5BiasOptions options{1, 32, distance, bidirectional};
      const T5RelativeBias<float> term(options);
      for (const Index offset : {Index(0), Index(7), Index(-9), Index(65'535), Index(-65'536),
                                 Index(65'537), Index(-70'000), Index(1) << 21, -(Index(1) << 40),
                                 distance, -distance - 1, std::numeric_limits<Index>::max() / 2}) {
        const Index clamped = std::clamp(offset, -distance, distance);
        ASSERT_EQ(term.bucket(offset), t5_relative_position_bucket(clamped, options))
            << distance << " " << offset;
      }
      // Beyond max_distance every offset of a sign has the last bucket of that sign.
      EXPECT_EQ(term.bucket(distance * 2), term.bucket(distance));
      EXPECT_EQ(term.bucket(-distance * 2), term.bucket(-distance));
    }
}

template <class T>
class T5Test : public ::testing::Test {};
TYPED_TEST_SUITE(T5Test, testing::Scalars, testing::ScalarName);

TYPED_TEST(T5Test, BiasMatchesComputeBias) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = testing::default_tolerance<T>();
  for (const auto& [name, bidirectional, heads, L, S] :
       {std::tuple<std::string, bool, Index, Index, Index>{"t5_bi", true, 4, 20, 26},
        {"t5_causal", false, 3, 24, 24}}) {
    SCOPED_TRACE(name);
    T5RelativeBias<T> term({heads, 16, 20, bidirectional});
    term.relative_attention_bias = file.get<T>(name + ".relative_attention_bias").matrix();
    ATTNLENS_EXPECT_CLOSE(term_bias<T>(term, heads, L, S, 5, 7), file.get<T>(name + ".bias"), tol);
  }
}

TEST(T5RelativeBias, BadOptionsAndTablesNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { T5RelativeBias<float>({0}); }, "num_heads");
  expect_error_naming<ArgumentError>(
      [] {
        T5RelativeBias<float>({2, 3, 128, true});
      },
      "num_buckets");
  expect_error_naming<ArgumentError>(
      [] {
        T5RelativeBias<float>({2, 32, 8, true});
      },
      "max_distance");
  T5RelativeBias<float> term({2});
  term.check({1, 2, 4, 4});
  expect_error_naming<ShapeError>([&] { term.check({1, 3, 4, 4}); }, "relative_attention_bias");
}

}  // namespace
}  // namespace attnlens
