// image/augment.hpp: a flip twice is the identity, a crop with padding 0 is the identity, a
// crop moves the content by p - top, p - left (against padding and slicing written out here),
// draws are fixed for a seed (from a Python transcription of PortableRng), reproducible and
// different for another seed, flips come half of the time and corners uniformly; the
// per-channel normalization is torchvision's (x - mean) / std.
#include <gtest/gtest.h>

#include <vector>

#include "attnlens/core/init.hpp"
#include "attnlens/image/augment.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

Tensor<float> augment_random_images(const Shape& shape, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float> images(shape);
  for (float& v : images.storage()) v = rng.uniform<float>(0.0f, 1.0f);
  return images;
}

// RandomCrop(padding = p) then hflip, written as pad-then-slice.
Tensor<float> augment_by_padding(const Tensor<float>& images, const std::vector<AugmentDraw>& draws,
                                 Index p, float fill) {
  const Index n = images.dim(0), c = images.dim(1), h = images.dim(2), w = images.dim(3);
  Tensor<float> out(images.shape());
  for (Index b = 0; b < n; ++b)
    for (Index ch = 0; ch < c; ++ch) {
      Matrix<float> padded = Matrix<float>::Constant(h + 2 * p, w + 2 * p, fill);
      padded.block(p, p, h, w) = images.matrix({b, ch});
      const AugmentDraw& d = draws[static_cast<std::size_t>(b)];
      Matrix<float> crop = padded.block(d.top, d.left, h, w);
      if (d.flip) crop = crop.rowwise().reverse().eval();
      out.matrix({b, ch}) = crop;
    }
  return out;
}

TEST(Augment, FlipTwiceIsTheIdentity) {
  const Tensor<float> images = augment_random_images({3, 2, 5, 7}, 1);
  const Tensor<float> flipped = horizontal_flip(images);
  EXPECT_FALSE(flipped == images);
  EXPECT_EQ(flipped.at({1, 1, 2, 0}), images.at({1, 1, 2, 6}));
  EXPECT_EQ(horizontal_flip(flipped), images);
}

TEST(Augment, CropWithPaddingZeroIsTheIdentity) {
  const Tensor<float> images = augment_random_images({4, 3, 6, 6}, 2);
  AugmentOptions options;
  options.flip_probability = 0.0;
  PortableRng rng(5);
  const std::vector<AugmentDraw> draws = draw_augmentations(100, options, rng);
  for (const AugmentDraw& d : draws) EXPECT_EQ(d, (AugmentDraw{0, 0, false}));
  PortableRng again(5);
  EXPECT_EQ(augment_images(images, options, again), images);
}

TEST(Augment, CropMovesTheContentByTheDrawnOffset) {
  const Index p = 2;
  AugmentOptions options;
  options.crop_padding = p;
  options.fill = -1.0;
  const Tensor<float> images = augment_random_images({1, 2, 5, 6}, 3);
  for (Index top = 0; top <= 2 * p; ++top)
    for (Index left = 0; left <= 2 * p; ++left)
      for (const bool flip : {false, true}) {
        const std::vector<AugmentDraw> draws{{top, left, flip}};
        EXPECT_EQ(augment_images(images, draws, options),
                  augment_by_padding(images, draws, p, -1.0f))
            << top << " " << left << " " << flip;
      }
  // One bright pixel at (1, 4) moves down by p - top and right by p - left.
  Tensor<float> dot({1, 1, 5, 6});
  dot.at({0, 0, 1, 4}) = 1.0f;
  options.fill = 0.0;
  const Tensor<float> moved = augment_images(dot, {{1, 3, false}}, options);
  EXPECT_EQ(moved.at({0, 0, 2, 3}), 1.0f);
  EXPECT_EQ(moved.matrix({0, 0}).sum(), 1.0f);
  // Moved out of the image, only the fill is left.
  const Tensor<float> gone = augment_images(dot, {{0, 0, false}}, options);
  EXPECT_EQ(gone.matrix({0, 0}).sum(), 0.0f);
}

TEST(Augment, DrawsAreFixedForASeedAndReproducible) {
  AugmentOptions options;
  options.crop_padding = 4;
  PortableRng rng(9);
  const std::vector<AugmentDraw> draws = draw_augmentations(4, options, rng);
  EXPECT_EQ(draws,
            (std::vector<AugmentDraw>{{6, 6, false}, {1, 1, false}, {3, 3, true}, {8, 3, true}}));

  const Tensor<float> images = augment_random_images({16, 1, 8, 8}, 4);
  PortableRng a(21), b(21), c(22);
  const Tensor<float> first = augment_images(images, options, a);
  EXPECT_EQ(augment_images(images, options, b), first);
  EXPECT_EQ(a, b);  // the same number of draws
  EXPECT_FALSE(augment_images(images, options, c) == first);
  EXPECT_FALSE(augment_images(images, options, a) == first);  // the generator moved on
}

TEST(Augment, FlipsHalfTheTimeAndCornersUniformly) {
  AugmentOptions options;
  options.crop_padding = 2;
  PortableRng rng(17);
  const int n = 20000;
  const std::vector<AugmentDraw> draws = draw_augmentations(n, options, rng);
  int flips = 0;
  std::vector<int> tops(5, 0), lefts(5, 0);
  for (const AugmentDraw& d : draws) {
    flips += d.flip;
    ++tops.at(static_cast<std::size_t>(d.top));
    ++lefts.at(static_cast<std::size_t>(d.left));
  }
  EXPECT_NEAR(flips / static_cast<double>(n), 0.5, 0.018);  // 5 sigma = 5 x 0.0035
  for (int k = 0; k < 5; ++k) {
    EXPECT_NEAR(tops[static_cast<std::size_t>(k)], 4000, 285);  // 5 sigma
    EXPECT_NEAR(lefts[static_cast<std::size_t>(k)], 4000, 285);
  }
  options.flip_probability = 1.0;
  for (const AugmentDraw& d : draw_augmentations(50, options, rng)) EXPECT_TRUE(d.flip);
}

TEST(Augment, BadArgumentsAreNamed) {
  const Tensor<float> images({2, 1, 4, 4});
  AugmentOptions options;
  options.crop_padding = -1;
  PortableRng rng;
  expect_error_naming<ArgumentError>([&] { augment_images(images, options, rng); },
                                     "AugmentOptions::crop_padding");
  options.crop_padding = 1;
  options.flip_probability = 1.5;
  expect_error_naming<ArgumentError>([&] { augment_images(images, options, rng); },
                                     "AugmentOptions::flip_probability");
  options.flip_probability = 0.5;
  expect_error_naming<ShapeError>(
      [&] {
        augment_images(images, {{0, 0, false}}, options);
      },
      "augment_images draws");
  expect_error_naming<ArgumentError>(
      [&] {
        augment_images(images, {{0, 0, false}, {3, 0, false}}, options);
      },
      "augment_images draws[1]");
  expect_error_naming<ShapeError>([&] { horizontal_flip(Tensor<float>({4, 4})); }, "B x C x H x W");
}

TEST(Augment, NormalizationIsPerChannel) {
  Tensor<double> images({2, 2, 1, 2});
  images.storage() = {0.0, 1.0, 0.5, 0.25, 0.2, 0.4, 0.6, 0.8};
  Tensor<double> same = images;
  normalize_images(same, {});
  EXPECT_EQ(same, images);
  normalize_images(images, {{0.5, 0.25}, {0.5, 2.0}});
  EXPECT_EQ(images.storage(),
            (Tensor<double>::Storage{-1.0, 1.0, 0.125, 0.0, (0.2 - 0.5) / 0.5, (0.4 - 0.5) / 0.5,
                                     (0.6 - 0.25) / 2.0, (0.8 - 0.25) / 2.0}));
  Tensor<double> x({1, 3, 1, 1});
  expect_error_naming<ArgumentError>(
      [&] {
        normalize_images(x, {{0.0, 0.0}, {1.0}});
      },
      "ImageNormalization::mean");
  expect_error_naming<ArgumentError>(
      [&] {
        normalize_images(x, {{0.0}, {0.0}});
      },
      "ImageNormalization::std[0]");
}

}  // namespace
}  // namespace attnlens
