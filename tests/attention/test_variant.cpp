// The variant vocabulary: names (as the encoder config spells them), published defaults and
// the checks that name a bad option.
#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/attention/variant.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

TEST(AttentionVariant, NamesRoundTrip) {
  for (const auto type :
       {AttentionVariantType::softmax, AttentionVariantType::bilateral, AttentionVariantType::kde,
        AttentionVariantType::robust_kde, AttentionVariantType::fourier,
        AttentionVariantType::elliptical, AttentionVariantType::neutreno})
    EXPECT_EQ(attention_variant_from_name(attention_variant_name(type)), type);
  EXPECT_EQ(distance_kernel_from_name("laplacian"), DistanceKernelType::laplacian);
  testing::expect_error_naming<ArgumentError>(
      [] { (void)attention_variant_from_name("twice", "attention.type"); }, "attention.type");
  testing::expect_error_naming<ArgumentError>([] { (void)distance_kernel_from_name("box"); },
                                              "'box'");
}

TEST(AttentionVariant, PublishedDefaults) {
  const AttentionVariantOptions o;
  EXPECT_EQ(o.type, AttentionVariantType::softmax);
  EXPECT_EQ(o.boost, 0);
  EXPECT_EQ(o.huber_a, 0.2);
  EXPECT_EQ(o.fourier_epsilon, 1e-6);
  EXPECT_EQ(o.elliptical_delta, 5.0);
  EXPECT_EQ(o.neutreno_lambda, 0.6);
  EXPECT_TRUE(uses_stack_values(AttentionVariantType::neutreno));
  EXPECT_TRUE(uses_stack_values(AttentionVariantType::elliptical));
  EXPECT_FALSE(uses_stack_values(AttentionVariantType::bilateral));
  check_variant_options(o);
}

TEST(AttentionVariant, BadOptionsNameTheOption) {
  AttentionVariantOptions o;
  o.domain.grid = Grid2d{0, 3, 0};
  testing::expect_error_naming<ArgumentError>([&] { check_variant_options(o, "v"); },
                                              "v::domain.grid");
  o = {};
  o.domain.grid = Grid2d{2, 3, 0};
  o.domain.leading = 1;
  testing::expect_error_naming<ArgumentError>([&] { check_variant_options(o, "v"); },
                                              "v::domain.leading");
  o = {};
  o.boost = -2;
  testing::expect_error_naming<ArgumentError>([&] { check_variant_options(o, "v"); },
                                              "v::boost: expected >= 0, got -2");
}

}  // namespace
}  // namespace attnlens
