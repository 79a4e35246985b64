// image/corruption.hpp: every corruption is fixed by its seed (salt and pepper pinned to a Python
// transcription of PortableRng), differs for another seed and does not depend on how the images
// are batched; salt and pepper changes the binomial share of values, half to 0 and half to 1; the
// blur keeps constants, takes a delta to the normalized Gaussian and equals a direct 2-D sum with
// clamped indices; contrast keeps the mean and scales the variance by c^2 (per channel); noise
// has its sigma;
// bad options and pixels are named.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/init.hpp"
#include "attnlens/image/corruption.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T = float>
Tensor<T> corruption_random_images(const Shape& shape, std::uint64_t seed, double low = 0.0,
                                   double high = 1.0) {
  Rng rng(seed);
  Tensor<T> images(shape);
  for (T& v : images.storage()) v = static_cast<T>(rng.uniform<double>(low, high));
  return images;
}

template <class T = float>
Tensor<T> corruption_constant_images(const Shape& shape, double value) {
  Tensor<T> images(shape);
  std::fill(images.storage().begin(), images.storage().end(), static_cast<T>(value));
  return images;
}

// Images first..first + count - 1 of a batch, as a batch.
Tensor<float> corruption_slice(const Tensor<float>& images, Index first, Index count) {
  Shape shape = images.shape();
  shape[0] = count;
  Tensor<float> out(shape);
  const Index per_image = images.size() / images.dim(0);
  std::copy(images.data() + first * per_image, images.data() + (first + count) * per_image,
            out.data());
  return out;
}

double corruption_mean(const Tensor<double>& x) {
  double sum = 0;
  for (double v : x.storage()) sum += v;
  return sum / static_cast<double>(x.size());
}

double corruption_variance(const Tensor<double>& x) {
  const double mean = corruption_mean(x);
  double sum = 0;
  for (double v : x.storage()) sum += (v - mean) * (v - mean);
  return sum / static_cast<double>(x.size());
}

const std::vector<CorruptionOptions>& every_corruption() {
  static const std::vector<CorruptionOptions> all{
      CorruptionOptions::salt_and_pepper(0.05, 3), CorruptionOptions::blur(1.0),
      CorruptionOptions::contrast(0.5), CorruptionOptions::noise(0.1, 3)};
  return all;
}

TEST(Corruption, FixedBySeedAndIndependentOfTheBatch) {
  const Tensor<float> images = corruption_random_images({10, 2, 9, 7}, 1);
  for (const CorruptionOptions& options : every_corruption()) {
    SCOPED_TRACE(corruption_label(options));
    const Tensor<float> corrupted = corrupt_images(images, options);
    EXPECT_FALSE(corrupted == images);
    EXPECT_TRUE(corrupt_images(images, options) == corrupted);
    // Images 4..9 as a batch of their own (starting at image 4) and image 7 alone.
    EXPECT_TRUE(corrupt_images(corruption_slice(images, 4, 6), options, 4) ==
                corruption_slice(corrupted, 4, 6));
    EXPECT_TRUE(corrupt_images(corruption_slice(images, 7, 1), options, 7) ==
                corruption_slice(corrupted, 7, 1));
    CorruptionOptions other = options;
    other.seed = 4;
    const bool random = options.type == CorruptionType::salt_and_pepper ||
                        options.type == CorruptionType::gaussian_noise;
    EXPECT_EQ(corrupt_images(images, other) == corrupted, !random);
    if (random) {  // image i has its own stream: image 0 at position 4 is corrupted differently
      EXPECT_FALSE(corrupt_images(corruption_slice(images, 4, 6), options, 0) ==
                   corruption_slice(corrupted, 4, 6));
    }
    for (float v : corrupted.storage()) ASSERT_TRUE(v >= 0.0f && v <= 1.0f) << v;
  }
  EXPECT_TRUE(corrupt_images(images, CorruptionOptions::clean()) == images);
}

TEST(Corruption, SaltAndPepperDrawsArePinned) {
  // Stream i of seed 1 ^ sqrt(7)'s bits, one uniform per value: < 0.25 -> 0, < 0.5 -> 1, else
  // kept. The patterns come from a Python transcription of PortableRng (docs/data.md).
  const std::string expected[] = {
      "..0100..1010.1..1...101...1...00010.11.01100..0.0.0..0..0..11.00",
      "101.....011.00.0.1.00..1...0...01.....10..1.0.1....110.0.1...0.0"};
  const Tensor<float> grey = corruption_constant_images({1, 1, 8, 8}, 0.5);
  const Index firsts[] = {0, 3};
  for (int i = 0; i < 2; ++i) {
    const Tensor<float> out =
        corrupt_images(grey, CorruptionOptions::salt_and_pepper(0.5, 1), firsts[i]);
    std::string pattern;
    for (float v : out.storage()) pattern += v == 0.0f ? '0' : v == 1.0f ? '1' : '.';
    EXPECT_EQ(pattern, expected[i]);
  }
}

TEST(Corruption, SaltAndPepperChangesTheBinomialShareHalfToZero) {
  // 2 x 3 x 128 x 128 = 98,304 values away from 0 and 1: the count of changed ones within
  // 5 standard deviations of n p, and the zeros among them within 5 of half.
  const Tensor<float> images = corruption_random_images({2, 3, 128, 128}, 2, 0.1, 0.9);
  for (const double fraction : {0.05, 0.3}) {
    const Tensor<float> out =
        corrupt_images(images, CorruptionOptions::salt_and_pepper(fraction, 9));
    Index changed = 0, zeros = 0;
    for (Index i = 0; i < out.size(); ++i) {
      const float v = out.data()[i];
      if (v == images.data()[i]) continue;
      ++changed;
      zeros += v == 0.0f;
      ASSERT_TRUE(v == 0.0f || v == 1.0f) << v;
    }
    const double n = static_cast<double>(out.size());
    EXPECT_NEAR(static_cast<double>(changed), n * fraction,
                5 * std::sqrt(n * fraction * (1 - fraction)));
    EXPECT_NEAR(static_cast<double>(zeros), 0.5 * static_cast<double>(changed),
                5 * std::sqrt(0.25 * static_cast<double>(changed)));
  }
  // The limits: 0 changes nothing, 1 every value.
  EXPECT_TRUE(corrupt_images(images, CorruptionOptions::salt_and_pepper(0.0, 9)) == images);
  const Tensor<float> all = corrupt_images(images, CorruptionOptions::salt_and_pepper(1.0, 9));
  for (float v : all.storage()) ASSERT_TRUE(v == 0.0f || v == 1.0f);
}

TEST(Corruption, BlurKeepsConstantsAndMeans) {
  for (const double sigma : {0.5, 1.0, 2.5, 40.0}) {
    SCOPED_TRACE(sigma);
    // A constant stays itself: in float exactly (the sum is formed in double and rounded once),
    // in double to rounding.
    const Tensor<float> flat = corruption_constant_images({1, 2, 11, 6}, 0.3);
    EXPECT_TRUE(corrupt_images(flat, CorruptionOptions::blur(sigma)) == flat);
    const Tensor<double> blurred = corrupt_images(
        corruption_constant_images<double>({1, 1, 11, 6}, 0.3), CorruptionOptions::blur(sigma));
    for (double v : blurred.storage()) ASSERT_NEAR(v, 0.3, 1e-15);
  }
  // A random image's mean moves only through the edges (the clamped kernel's columns do not all
  // sum to one there), by far less than its pixels' spread.
  const Tensor<double> images = corruption_random_images<double>({1, 1, 128, 128}, 5);
  const Tensor<double> blurred = corrupt_images(images, CorruptionOptions::blur(1.5));
  EXPECT_NEAR(corruption_mean(blurred), corruption_mean(images), 2e-3);
  EXPECT_LT(corruption_variance(blurred), 0.3 * corruption_variance(images));
  // sigma 0 is the identity.
  EXPECT_TRUE(corrupt_images(images, CorruptionOptions::blur(0.0)) == images);
}

// exp(-(dy^2 + dx^2) / (2 s^2)) over the square |dy|, |dx| <= ceil(3 s), normalized over it: the
// 2-D kernel, summed directly (not as two 1-D passes).
double corruption_gaussian_2d(Index dy, Index dx, double sigma) {
  const auto r = static_cast<Index>(std::ceil(3 * sigma));
  if (std::abs(dy) > r || std::abs(dx) > r) return 0.0;
  double sum = 0;
  for (Index i = -r; i <= r; ++i)
    for (Index j = -r; j <= r; ++j) sum += std::exp(-double(i * i + j * j) / (2 * sigma * sigma));
  return std::exp(-double(dy * dy + dx * dx) / (2 * sigma * sigma)) / sum;
}

TEST(Corruption, BlurOfADeltaIsTheNormalizedGaussian) {
  for (const double sigma : {0.6, 1.0, 2.2}) {
    SCOPED_TRACE(sigma);
    Tensor<double> delta({1, 1, 21, 23});
    delta.at({0, 0, 10, 11}) = 1.0;
    const Tensor<double> out = corrupt_images(delta, CorruptionOptions::blur(sigma));
    double total = 0;
    for (Index y = 0; y < 21; ++y)
      for (Index x = 0; x < 23; ++x) {
        const double v = out.at({0, 0, y, x});
        total += v;
        ASSERT_NEAR(v, corruption_gaussian_2d(y - 10, x - 11, sigma), 1e-15) << y << ", " << x;
      }
    EXPECT_NEAR(total, 1.0, 1e-14);
  }
}

TEST(Corruption, BlurClampsAtTheEdges) {
  // out(y, x) = sum over the square of K(dy, dx) in(clamp(y + dy), clamp(x + dx)): the edge
  // values repeat beyond the border (mode 'nearest').
  const double sigma = 1.3;
  const auto r = static_cast<Index>(std::ceil(3 * sigma));
  const Tensor<double> images = corruption_random_images<double>({2, 2, 5, 8}, 6);
  const Tensor<double> out = corrupt_images(images, CorruptionOptions::blur(sigma));
  const auto clamp = [](Index i, Index n) { return std::min(std::max(i, Index{0}), n - 1); };
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < 2; ++c)
      for (Index y = 0; y < 5; ++y)
        for (Index x = 0; x < 8; ++x) {
          double sum = 0;
          for (Index dy = -r; dy <= r; ++dy)
            for (Index dx = -r; dx <= r; ++dx)
              sum += corruption_gaussian_2d(dy, dx, sigma) *
                     images.at({b, c, clamp(y + dy, 5), clamp(x + dx, 8)});
          ASSERT_NEAR(out.at({b, c, y, x}), sum, 1e-14) << b << c << y << x;
        }
}

TEST(Corruption, ContrastKeepsTheMeanAndScalesTheVariance) {
  // Values in [0.3, 0.7]: (x - m) c + m stays in [0, 1] for c <= 1.5, so nothing is clipped.
  const Tensor<double> images = corruption_random_images<double>({1, 1, 32, 32}, 7, 0.3, 0.7);
  for (const double c : {0.0, 0.5, 1.0, 1.5}) {
    SCOPED_TRACE(c);
    const Tensor<double> out = corrupt_images(images, CorruptionOptions::contrast(c));
    EXPECT_NEAR(corruption_mean(out), corruption_mean(images), 1e-12);
    EXPECT_NEAR(corruption_variance(out), c * c * corruption_variance(images), 1e-12);
  }
  EXPECT_TRUE(corrupt_images(images, CorruptionOptions::contrast(1.0)) == images);
  // Per channel: each channel keeps its own mean.
  Tensor<double> two({1, 2, 1, 2});
  two.storage() = {0.2, 0.4, 0.7, 0.9};
  const Tensor<double> halved = corrupt_images(two, CorruptionOptions::contrast(0.5));
  EXPECT_NEAR(halved.at({0, 0, 0, 0}), 0.25, 1e-15);
  EXPECT_NEAR(halved.at({0, 1, 0, 1}), 0.85, 1e-15);
  // A strong factor clips to the pixel range: all but the values within 0.5 / 100 of the mean
  // become 0 or 1.
  const Tensor<double> hard = corrupt_images(images, CorruptionOptions::contrast(100.0));
  const double m = corruption_mean(images);
  Index clipped = 0;
  for (Index i = 0; i < images.size(); ++i) {
    const double x = images.data()[i], v = hard.data()[i];
    ASSERT_NEAR(v, std::min(std::max((x - m) * 100 + m, 0.0), 1.0), 1e-12) << x;
    clipped += v == 0.0 || v == 1.0;
  }
  EXPECT_GT(clipped, images.size() * 9 / 10);
}

TEST(Corruption, NoiseHasItsStandardDeviation) {
  // 16,384 values of a grey image, 5 sigma away from the clamping: mean and deviation.
  const Tensor<double> grey = corruption_constant_images<double>({4, 1, 64, 64}, 0.5);
  const double sigma = 0.08;
  const Tensor<double> noisy = corrupt_images(grey, CorruptionOptions::noise(sigma, 2));
  const double n = static_cast<double>(noisy.size());
  EXPECT_NEAR(corruption_mean(noisy), 0.5, 4 * sigma / std::sqrt(n));
  EXPECT_NEAR(std::sqrt(corruption_variance(noisy)), sigma, 0.05 * sigma);
}

TEST(Corruption, BadOptionsAndPixelsAreNamed) {
  const Tensor<float> images = corruption_random_images({2, 1, 4, 4}, 8);
  const auto corrupt = [&](const CorruptionOptions& options) {
    return [&images, options] { corrupt_images(images, options); };
  };
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::salt_and_pepper(-0.1)),
                                     "CorruptionOptions::fraction: expected a probability in "
                                     "[0, 1], got -0.1");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::salt_and_pepper(1.5)),
                                     "CorruptionOptions::fraction");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::salt_and_pepper(std::nan(""))),
                                     "CorruptionOptions::fraction");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::blur(-1)),
                                     "CorruptionOptions::sigma: expected a blur width in [0, 1000] "
                                     "pixels, got -1");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::blur(INFINITY)),
                                     "CorruptionOptions::sigma");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::blur(1001)),
                                     "CorruptionOptions::sigma");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::contrast(-0.5)),
                                     "CorruptionOptions::factor: expected a value in [0, 1e+06]");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::contrast(std::nan(""))),
                                     "CorruptionOptions::factor");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::noise(-0.1)),
                                     "CorruptionOptions::sigma: expected a value in [0, 1e+06]");
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::noise(INFINITY)),
                                     "CorruptionOptions::sigma");
  // Out of float's range, sigma z would not convert: refused, not undefined.
  expect_error_naming<ArgumentError>(corrupt(CorruptionOptions::noise(1e300)),
                                     "CorruptionOptions::sigma");
  expect_error_naming<ArgumentError>(
      [&] { corrupt_images(images, CorruptionOptions::blur(1), -1); },
      "corrupt_images first_image: expected >= 0, got -1");
  Tensor<float> bright = images;
  bright.at({1, 0, 2, 3}) = 1.5f;
  expect_error_naming<ArgumentError>(
      [&] { corrupt_images(bright, CorruptionOptions::contrast(0.5)); },
      "pixels (flat index 27): expected a value in [0, 1]");
  bright.at({1, 0, 2, 3}) = std::nanf("");
  expect_error_naming<ArgumentError>([&] { corrupt_images(bright, CorruptionOptions::blur(1)); },
                                     "pixels (flat index 27)");
  expect_error_naming<ShapeError>(
      [&] {
        corrupt_images(Tensor<float>({4, 4}), CorruptionOptions::blur(1));
      },
      "corrupt_images images: expected a batch B x C x H x W");
  // The names of the types, for reports and configurations.
  EXPECT_EQ(value_named(k_corruption_names, "salt-and-pepper", "corruption"),
            CorruptionType::salt_and_pepper);
  EXPECT_EQ(corruption_label(CorruptionOptions::blur(1.5)), "blur sigma 1.5");
}

}  // namespace
}  // namespace attnlens
