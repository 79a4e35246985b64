// core/portable_rng.hpp: SplitMix64's published outputs (state 0: e220a8397b1dcdaf, ...), the
// (seed, stream) seeding and bounded draws against a Python transcription of the same
// definitions (so a platform that computed them differently fails here), unbiased bounded
// draws, and the state round trip.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "attnlens/core/portable_rng.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

TEST(PortableRng, IsSplitMix64) {
  PortableRng rng = PortableRng::from_state(0);
  EXPECT_EQ(rng.next(), 0xe220a8397b1dcdafu);
  EXPECT_EQ(rng.next(), 0x6e789e6aa1b965f4u);
  EXPECT_EQ(rng.next(), 0x06c45d188009454fu);
}

// Expected values from the same definitions in Python's arbitrary-precision integers.
TEST(PortableRng, SeedAndStreamGiveTheDocumentedSequences) {
  EXPECT_EQ(PortableRng(0).state(), 0x48218226ff3cd4bfu);
  PortableRng zero(0, 0);
  EXPECT_EQ(zero.next(), 0x568a9b0b1a2c05ecu);
  EXPECT_EQ(zero.next(), 0x44e5b8b147ef718bu);
  EXPECT_EQ(zero.next(), 0x458563ab55521133u);
  PortableRng other(42, 7);
  EXPECT_EQ(other.next(), 0xdeb745320506897au);
  EXPECT_EQ(other.next(), 0xab8922ad642bda36u);
  EXPECT_NE(PortableRng(42, 7), PortableRng(42, 8));
  EXPECT_NE(PortableRng(42, 7), PortableRng(43, 7));

  PortableRng small(5);
  std::vector<std::uint64_t> draws;
  for (int i = 0; i < 10; ++i) draws.push_back(small.below(3));
  EXPECT_EQ(draws, (std::vector<std::uint64_t>{2, 0, 0, 1, 0, 0, 2, 1, 0, 2}));
  // A bound just above 2^63 rejects almost half of the draws.
  PortableRng large(5);
  const std::uint64_t bound = (std::uint64_t{1} << 63) + 1;
  EXPECT_EQ(large.below(bound), 7776124435938660011u);
  EXPECT_EQ(large.below(bound), 1403818796285901882u);
  EXPECT_EQ(large.below(bound), 1776300905949990702u);
}

TEST(PortableRng, BoundedDrawsAreUniform) {
  PortableRng rng(11);
  constexpr int k_bound = 7, k_draws = 70000;
  std::vector<int> counts(k_bound, 0);
  for (int i = 0; i < k_draws; ++i) {
    const std::uint64_t v = rng.below(k_bound);
    ASSERT_LT(v, static_cast<std::uint64_t>(k_bound));
    ++counts[static_cast<std::size_t>(v)];
  }
  // 10000 expected each, binomial standard deviation about 92: 5 sigma.
  for (const int c : counts) EXPECT_NEAR(c, 10000, 460);
  EXPECT_EQ(rng.below(1), 0u);
  testing::expect_error_naming<ArgumentError>([&] { rng.below(0); }, "bound");
}

TEST(PortableRng, UniformAndBernoulli) {
  PortableRng rng(3);
  double sum = 0;
  int heads = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    heads += rng.bernoulli(0.25);
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
  EXPECT_NEAR(heads / 100000.0, 0.25, 0.007);
  EXPECT_FALSE(rng.bernoulli(0.0));
  EXPECT_TRUE(rng.bernoulli(1.0));
}

TEST(PortableRng, StateRoundTripContinuesTheSequence) {
  PortableRng rng(99, 1);
  rng.next();
  PortableRng copy = PortableRng::from_state(rng.state());
  EXPECT_EQ(copy, rng);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(copy.next(), rng.next());
}

}  // namespace
}  // namespace attnlens
