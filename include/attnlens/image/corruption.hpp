// Seeded corruptions of an image batch B x C x H x W in [0, 1], as the corruption benchmarks
// apply them (Hendrycks and Dietterich's ImageNet-C, Mu and Gilmer's MNIST-C): salt and pepper,
// Gaussian blur, contrast and Gaussian noise. Image i of a data set draws from its own
// PortableRng stream, so a corrupted test set is the same whatever the batches it is cut into,
// and the same on every platform (docs/data.md, "Corruptions").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/image/augment.hpp"

namespace attnlens {

enum class CorruptionType {
  none,             // the images as they are
  salt_and_pepper,  // each value becomes 0 or 1 (half each) with probability `fraction`
  gaussian_blur,    // separable Gaussian of `sigma` pixels, radius ceil(3 sigma), edges clamped
  contrast,         // (x - m) factor + m per image and channel, m its mean, clipped to [0, 1]
  gaussian_noise,   // clamp(x + sigma z, 0, 1), z ~ N(0, 1) per value
};

inline constexpr Named<CorruptionType> k_corruption_names[] = {
    {CorruptionType::none, "none"},
    {CorruptionType::salt_and_pepper, "salt-and-pepper"},
    {CorruptionType::gaussian_blur, "blur"},
    {CorruptionType::contrast, "contrast"},
    {CorruptionType::gaussian_noise, "noise"}};

// The largest noise width and contrast factor accepted (and, in train/adversarial.hpp, attack
// radius): far past any meaningful length for pixels in [0, 1], and small enough that the value
// times a normal draw still converts to float (a double out of float's range would be undefined
// behaviour in the conversion).
inline constexpr double k_max_pixel_length = 1e6;

// A blur wider than this many pixels is refused: its kernel has 2 ceil(3 sigma) + 1 taps and each
// pass costs that many multiply-adds per pixel. ImageNet-C's strongest blur is sigma 6 on 224 x 224
// images; at 1000 a 28 x 28 image is a constant to far below 8-bit precision.
inline constexpr double k_max_blur_sigma = 1000.0;

// One corruption. Only the fields of `type` are read; the seed only by the random ones
// (salt_and_pepper, gaussian_noise).
struct CorruptionOptions {
  CorruptionType type = CorruptionType::none;
  double fraction = 0;     // salt_and_pepper: in [0, 1]
  double sigma = 0;        // gaussian_blur: in pixels, [0, k_max_blur_sigma]; gaussian_noise:
                           // in intensity units (pixels in [0, 1]), finite >= 0
  double factor = 1;       // contrast: finite >= 0 (0: every value its channel's mean, 1: as is)
  std::uint64_t seed = 0;  // salt_and_pepper, gaussian_noise

  // Each fills its fields and leaves the others at their defaults: {type, fraction, sigma,
  // factor, seed}.
  static CorruptionOptions clean() { return {}; }
  static CorruptionOptions salt_and_pepper(double fraction, std::uint64_t seed = 0) {
    return {CorruptionType::salt_and_pepper, fraction, 0, 1, seed};
  }
  static CorruptionOptions blur(double sigma) {
    return {CorruptionType::gaussian_blur, 0, sigma, 1, 0};
  }
  static CorruptionOptions contrast(double factor) {
    return {CorruptionType::contrast, 0, 0, factor, 0};
  }
  static CorruptionOptions noise(double sigma, std::uint64_t seed = 0) {
    return {CorruptionType::gaussian_noise, 0, sigma, 1, seed};
  }
};

// Throws ArgumentError naming the first field of `type` out of its domain.
inline void check_corruption_options(const CorruptionOptions& options) {
  using detail::require_argument;
  switch (options.type) {
    case CorruptionType::none:
      break;
    case CorruptionType::salt_and_pepper:
      require_argument(options.fraction >= 0 && options.fraction <= 1,
                       "CorruptionOptions::fraction", "a probability in [0, 1]", options.fraction);
      break;
    case CorruptionType::gaussian_blur:
      require_argument(
          options.sigma >= 0 && options.sigma <= k_max_blur_sigma, "CorruptionOptions::sigma",
          detail::concat("a blur width in [0, ", k_max_blur_sigma, "] pixels"), options.sigma);
      break;
    case CorruptionType::contrast:
      require_argument(options.factor >= 0 && options.factor <= k_max_pixel_length,
                       "CorruptionOptions::factor",
                       detail::concat("a value in [0, ", k_max_pixel_length, "]"), options.factor);
      break;
    case CorruptionType::gaussian_noise:
      require_argument(options.sigma >= 0 && options.sigma <= k_max_pixel_length,
                       "CorruptionOptions::sigma",
                       detail::concat("a value in [0, ", k_max_pixel_length, "]"), options.sigma);
      break;
  }
}

// A short name for reports: "clean", "salt-and-pepper 0.05 seed 1", "blur sigma 1",
// "contrast 0.5", "noise sigma 0.1 seed 1".
inline std::string corruption_label(const CorruptionOptions& options) {
  using detail::concat;
  switch (options.type) {
    case CorruptionType::none:
      return "clean";
    case CorruptionType::salt_and_pepper:
      return concat("salt-and-pepper ", options.fraction, " seed ", options.seed);
    case CorruptionType::gaussian_blur:
      return concat("blur sigma ", options.sigma);
    case CorruptionType::contrast:
      return concat("contrast ", options.factor);
    case CorruptionType::gaussian_noise:
      return concat("noise sigma ", options.sigma, " seed ", options.seed);
  }
  return "?";
}

namespace detail {

// Image i's own random stream for one use: stream i of seed ^ use, so that different uses of one
// seed (noise, salt and pepper, PGD's random start) draw independently.
inline PortableRng image_rng(std::uint64_t seed, std::uint64_t use, Index image) {
  return PortableRng(seed ^ use, static_cast<std::uint64_t>(image));
}
inline constexpr std::uint64_t k_noise_stream = 0xbb67ae8584caa73bu;            // sqrt(3)'s bits
inline constexpr std::uint64_t k_salt_and_pepper_stream = 0xa54ff53a5f1d36f1u;  // sqrt(7)'s bits

// Pixels must be pixels: the corruptions and attacks clip to [0, 1]. NaN is refused too.
template <class T>
void check_unit_pixels(const Tensor<T>& pixels, const char* what) {
  check_image_batch(pixels.shape(), what);
  for (Index i = 0; i < pixels.size(); ++i) {
    const T x = pixels.data()[i];
    require_argument(x >= T(0) && x <= T(1), concat("pixels (flat index ", i, ")"),
                     "a value in [0, 1] (pixel units, before normalization)", x);
  }
}

template <class T>
T clamp_pixel(T x, T lower, T upper) {
  return std::min(std::max(x, lower), upper);
}

// Calls draw(rng, value) for every value of every image, in C, H, W order, image b of the batch
// being image first_image + b of the data set with its own stream.
template <class T, class Draw>
void for_each_image_pixel(Tensor<T>& pixels, std::uint64_t seed, std::uint64_t use,
                          Index first_image, Draw&& draw) {
  const Index images = pixels.dim(0), per_image = pixels.size() / std::max<Index>(images, 1);
  for (Index b = 0; b < images; ++b) {
    PortableRng rng = image_rng(seed, use, first_image + b);
    T* x = pixels.data() + b * per_image;
    for (Index i = 0; i < per_image; ++i) x[i] = draw(rng, x[i]);
  }
}

// The normalized 1-D Gaussian g_k = exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)),
// k = -r..r, r = ceil(3 sigma); index k + r. sigma > 0.
inline std::vector<double> gaussian_kernel(double sigma) {
  const auto radius = static_cast<Index>(std::ceil(3.0 * sigma));
  std::vector<double> kernel(static_cast<std::size_t>(2 * radius + 1));
  double sum = 0;
  for (Index k = -radius; k <= radius; ++k) {
    const double w = std::exp(-static_cast<double>(k * k) / (2.0 * sigma * sigma));
    kernel[static_cast<std::size_t>(k + radius)] = w;
    sum += w;
  }
  for (double& w : kernel) w /= sum;
  return kernel;
}

// One plane H x W (row stride W) blurred along rows, then along columns, edge values repeated
// beyond the border (scipy's and skimage's mode 'nearest'): in double, rounded to T once.
template <class T>
void blur_plane(const T* in, T* out, Index height, Index width, const std::vector<double>& kernel,
                std::vector<double>& rows) {
  const auto radius = static_cast<Index>(kernel.size() / 2);
  const auto clamp = [](Index i, Index n) { return std::min(std::max(i, Index{0}), n - 1); };
  rows.assign(static_cast<std::size_t>(height * width), 0.0);
  for (Index y = 0; y < height; ++y)
    for (Index x = 0; x < width; ++x) {
      double sum = 0;
      for (Index k = -radius; k <= radius; ++k)
        sum += kernel[static_cast<std::size_t>(k + radius)] *
               static_cast<double>(in[y * width + clamp(x + k, width)]);
      rows[static_cast<std::size_t>(y * width + x)] = sum;
    }
  for (Index y = 0; y < height; ++y)
    for (Index x = 0; x < width; ++x) {
      double sum = 0;
      for (Index k = -radius; k <= radius; ++k)
        sum += kernel[static_cast<std::size_t>(k + radius)] *
               rows[static_cast<std::size_t>(clamp(y + k, height) * width + x)];
      out[y * width + x] = static_cast<T>(sum);
    }
}

}  // namespace detail

// The batch `images` (B x C x H x W in [0, 1]: images first_image, first_image + 1, ... of a data
// set) corrupted as `options` says, each channel of each image on its own:
//   salt_and_pepper: per value one u = uniform() of the image's stream: u < fraction / 2 -> 0,
//                    fraction / 2 <= u < fraction -> 1, else unchanged;
//   gaussian_blur:   the separable Gaussian of detail::gaussian_kernel along rows, then columns,
//                    out-of-image neighbours taking the nearest edge value (clamped indices);
//                    sigma 0 leaves the images as they are;
//   contrast:        clamp((x - m) factor + m, 0, 1), m the mean of the image's channel
//                    (ImageNet-C's contrast takes the mean per channel too);
//   gaussian_noise:  clamp(x + sigma z, 0, 1), z from PortableRng::normal.
// The random ones draw value by value in C, H, W order from stream first_image + b of the seed
// (mixed with a constant per corruption, detail::image_rng). The result stays in [0, 1].
template <class T>
Tensor<T> corrupt_images(const Tensor<T>& images, const CorruptionOptions& options,
                         Index first_image = 0) {
  check_corruption_options(options);
  detail::require_argument(first_image >= 0, "corrupt_images first_image", ">= 0", first_image);
  detail::check_unit_pixels(images, "corrupt_images images");
  Tensor<T> out = images;
  switch (options.type) {
    case CorruptionType::none:
      break;
    case CorruptionType::salt_and_pepper: {
      const double half = options.fraction / 2;
      detail::for_each_image_pixel(out, options.seed, detail::k_salt_and_pepper_stream, first_image,
                                   [&](PortableRng& rng, T value) {
                                     const double u = rng.uniform();
                                     return u < half ? T(0) : u < options.fraction ? T(1) : value;
                                   });
      break;
    }
    case CorruptionType::gaussian_blur: {
      if (options.sigma == 0) break;
      const std::vector<double> kernel = detail::gaussian_kernel(options.sigma);
      const Index planes = images.dim(0) * images.dim(1);
      const Index height = images.dim(2), width = images.dim(3);
      std::vector<double> rows;
      for (Index p = 0; p < planes; ++p)
        detail::blur_plane(images.data() + p * height * width, out.data() + p * height * width,
                           height, width, kernel, rows);
      break;
    }
    case CorruptionType::contrast: {
      const Index planes = images.dim(0) * images.dim(1);
      const Index plane = images.dim(2) * images.dim(3);
      for (Index p = 0; p < planes; ++p) {
        T* x = out.data() + p * plane;
        double sum = 0;
        for (Index i = 0; i < plane; ++i) sum += static_cast<double>(x[i]);
        const double mean = plane > 0 ? sum / static_cast<double>(plane) : 0.0;
        for (Index i = 0; i < plane; ++i)
          x[i] = static_cast<T>(detail::clamp_pixel(
              (static_cast<double>(x[i]) - mean) * options.factor + mean, 0.0, 1.0));
      }
      break;
    }
    case CorruptionType::gaussian_noise:
      detail::for_each_image_pixel(out, options.seed, detail::k_noise_stream, first_image,
                                   [&](PortableRng& rng, T value) {
                                     const T z = static_cast<T>(options.sigma * rng.normal());
                                     return detail::clamp_pixel(value + z, T(0), T(1));
                                   });
      break;
  }
  return out;
}

}  // namespace attnlens
