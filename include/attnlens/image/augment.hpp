// Training-time transforms of an image batch B x C x H x W (the layout VisionTransformer and
// PatchEmbedding take): torchvision's RandomCrop(size, padding = p) followed by
// RandomHorizontalFlip(prob), each image with its own draws from a PortableRng (the same on
// every platform), and Normalize(mean, std) per channel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct AugmentOptions {
  // p >= 0: each image is padded by p on every side with `fill`, then an H x W window of the
  // padded (H + 2p) x (W + 2p) image is cut at a random corner. 0 leaves the image in place.
  Index crop_padding = 0;
  // The chance that an image is mirrored left to right (after the crop), in [0, 1].
  double flip_probability = 0.5;
  // The padding's value: 0 is black for images in [0, 1]; for normalized images black is
  // -mean / std.
  double fill = 0.0;
};

// One image's draws: the crop window's corner in the padded image (top, left in [0, 2p]) and
// the flip. The image's content moves down by p - top and right by p - left.
struct AugmentDraw {
  Index top = 0;
  Index left = 0;
  bool flip = false;

  friend bool operator==(const AugmentDraw& a, const AugmentDraw& b) {
    return a.top == b.top && a.left == b.left && a.flip == b.flip;
  }
  friend bool operator!=(const AugmentDraw& a, const AugmentDraw& b) { return !(a == b); }
};

namespace detail {

inline void check_augment_options(const AugmentOptions& options) {
  require_argument(options.crop_padding >= 0, "AugmentOptions::crop_padding", ">= 0",
                   options.crop_padding);
  checked_side(options.crop_padding, "AugmentOptions::crop_padding");
  require_argument(options.flip_probability >= 0.0 && options.flip_probability <= 1.0,
                   "AugmentOptions::flip_probability", "a probability in [0, 1]",
                   options.flip_probability);
}

inline void check_image_batch(const Shape& shape, const char* what) {
  require_shape(shape.size() == 4, what, "a batch B x C x H x W (rank 4)", shape_string(shape));
}

}  // namespace detail

// Draws for `count` images, image after image, three draws each: top = below(2p + 1),
// left = below(2p + 1), flip = bernoulli(flip_probability).
inline std::vector<AugmentDraw> draw_augmentations(Index count, const AugmentOptions& options,
                                                   PortableRng& rng) {
  detail::check_augment_options(options);
  detail::require_argument(count >= 0, "draw_augmentations count", ">= 0", count);
  const auto corners = static_cast<std::uint64_t>(2 * options.crop_padding + 1);
  std::vector<AugmentDraw> draws(static_cast<std::size_t>(count));
  for (AugmentDraw& draw : draws) {
    draw.top = static_cast<Index>(rng.below(corners));
    draw.left = static_cast<Index>(rng.below(corners));
    draw.flip = rng.bernoulli(options.flip_probability);
  }
  return draws;
}

// images B x C x H x W with image b cropped and flipped as draws[b] says:
// out(b, c, y, x) = in(b, c, y + top - p, x' + left - p), x' = W - 1 - x when flipped and x
// otherwise, and `fill` where that falls outside the image.
template <class T>
Tensor<T> augment_images(const Tensor<T>& images, const std::vector<AugmentDraw>& draws,
                         const AugmentOptions& options) {
  detail::check_augment_options(options);
  detail::check_image_batch(images.shape(), "augment_images images");
  const Index batch = images.dim(0), channels = images.dim(1);
  const Index height = images.dim(2), width = images.dim(3);
  detail::require_shape(static_cast<Index>(draws.size()) == batch, "augment_images draws",
                        detail::concat(batch, " (one per image)"), detail::concat(draws.size()));
  const Index p = options.crop_padding;
  const T fill = static_cast<T>(options.fill);
  Tensor<T> out(images.shape());
  for (Index b = 0; b < batch; ++b) {
    const AugmentDraw& draw = draws[static_cast<std::size_t>(b)];
    detail::require_argument(
        draw.top >= 0 && draw.top <= 2 * p && draw.left >= 0 && draw.left <= 2 * p,
        detail::concat("augment_images draws[", b, "]"),
        detail::concat("top and left in [0, ", 2 * p, "] (2 x crop_padding)"),
        detail::concat("top ", draw.top, ", left ", draw.left));
    const Index dy = draw.top - p, dx = draw.left - p;
    for (Index c = 0; c < channels; ++c) {
      const T* in = images.data() + ((b * channels + c) * height) * width;
      T* to = out.data() + ((b * channels + c) * height) * width;
      for (Index y = 0; y < height; ++y) {
        const Index sy = y + dy;
        T* row = to + y * width;
        if (sy < 0 || sy >= height) {
          std::fill(row, row + width, fill);
          continue;
        }
        const T* from = in + sy * width;
        for (Index x = 0; x < width; ++x) {
          const Index sx = (draw.flip ? width - 1 - x : x) + dx;
          row[x] = sx >= 0 && sx < width ? from[sx] : fill;
        }
      }
    }
  }
  return out;
}

// draw_augmentations for the batch, then augment_images with those draws.
template <class T>
Tensor<T> augment_images(const Tensor<T>& images, const AugmentOptions& options, PortableRng& rng) {
  detail::check_image_batch(images.shape(), "augment_images images");
  return augment_images(images, draw_augmentations(images.dim(0), options, rng), options);
}

// Every image of the batch mirrored left to right.
template <class T>
Tensor<T> horizontal_flip(const Tensor<T>& images) {
  detail::check_image_batch(images.shape(), "horizontal_flip images");
  const std::vector<AugmentDraw> flips(static_cast<std::size_t>(images.dim(0)),
                                       AugmentDraw{0, 0, true});
  return augment_images(images, flips, AugmentOptions{});
}

// (x - mean[c]) / std[c] per channel c, torchvision's Normalize; one value serves every
// channel. The defaults leave images unchanged.
struct ImageNormalization {
  std::vector<double> mean{0.0};
  std::vector<double> std{1.0};
};

// Normalizes images B x C x H x W in place.
template <class T>
void normalize_images(Tensor<T>& images, const ImageNormalization& normalization) {
  detail::check_image_batch(images.shape(), "normalize_images images");
  const Index batch = images.dim(0), channels = images.dim(1);
  const Index plane = images.dim(2) * images.dim(3);
  const auto check = [&](const std::vector<double>& values, const char* what) {
    detail::require_argument(values.size() == 1 || static_cast<Index>(values.size()) == channels,
                             what, detail::concat("1 or ", channels, " values (one per channel)"),
                             values.size());
  };
  check(normalization.mean, "ImageNormalization::mean");
  check(normalization.std, "ImageNormalization::std");
  for (std::size_t c = 0; c < normalization.mean.size(); ++c)
    detail::require_argument(std::isfinite(normalization.mean[c]),
                             detail::concat("ImageNormalization::mean[", c, "]"), "finite",
                             normalization.mean[c]);
  for (std::size_t c = 0; c < normalization.std.size(); ++c)
    detail::require_argument(std::isfinite(normalization.std[c]) && normalization.std[c] > 0,
                             detail::concat("ImageNormalization::std[", c, "]"), "finite and > 0",
                             normalization.std[c]);
  const auto value = [](const std::vector<double>& values, Index c) {
    return values[values.size() == 1 ? 0 : static_cast<std::size_t>(c)];
  };
  for (Index b = 0; b < batch; ++b)
    for (Index c = 0; c < channels; ++c) {
      const double mean = value(normalization.mean, c);
      const double std = value(normalization.std, c);
      T* x = images.data() + (b * channels + c) * plane;
      for (Index i = 0; i < plane; ++i)
        x[i] = static_cast<T>((static_cast<double>(x[i]) - mean) / std);
    }
}

}  // namespace attnlens
