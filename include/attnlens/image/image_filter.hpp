// Classical image filters computed by the attention engine (docs/math.md section 2, S0): the tokens
// are the pixels of a grayscale image on a Grid2d, queries = keys = identity projections of a
// pixel or of its patch, values = pixels, and each filter is a choice of kernel factors: range
// kernel, Gaussian domain term, square search window and boosting order.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/kernel/range_kernel.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/window.hpp"
#include "attnlens/position/distance_kernel.hpp"

namespace attnlens {

// K(i, j) of each filter; delta = p_j - p_i, y = pixel, P = patch of n = (2 pr + 1)^2 pixels.
enum class ImageFilterMethod {
  gaussian,   // exp(-|delta|^2 / (2 s^2))
  bilateral,  // exp(-|delta|^2 / (2 s^2)) exp(-(y_i - y_j)^2 / (2 r^2))
  nlm,        // exp(-|P_i - P_j|^2 / (n h^2))                 (non-local means)
  attention,  // exp(P_i . P_j / (n t)) [exp(-|delta|^2 / (2 s^2)) when s > 0]
};

struct ImageFilterOptions {
  ImageFilterMethod method = ImageFilterMethod::gaussian;
  double sigma_space = 0;    // s; 0: none (nlm, attention); nlm only takes R = ceil(3 s) from it
  double sigma_range = 0.1;  // r (bilateral)
  Index patch_radius = 3;    // pr (nlm, attention)
  double h = 0.1;            // nlm
  double temperature = 0.1;  // t (attention)
  Index radius = -1;         // search window |dr|, |dc| <= radius; < 0: ceil(3 s)
  Index boost = 0;           // z_0 = A y, z_{m+1} = z_m + A (y - z_m), m < boost
  // Short query tiles keep the keys visited per query near (2R + 1)^2: a tile of q pixels of
  // one image row visits (2R + 1) x (q + 2R) keys.
  FusedOptions fused = {{8, 256}, {}};
};

inline constexpr Named<ImageFilterMethod> k_image_filter_names[] = {
    {ImageFilterMethod::gaussian, "gaussian"},
    {ImageFilterMethod::bilateral, "bilateral"},
    {ImageFilterMethod::nlm, "nlm"},
    {ImageFilterMethod::attention, "attention"}};

inline const char* image_filter_name(ImageFilterMethod method) {
  return name_of(k_image_filter_names, method);
}

// The window radius the options select: radius, or ceil(3 sigma_space) when radius < 0
// (saturating at the largest Index: any radius beyond the image is the whole image).
inline Index image_filter_radius(const ImageFilterOptions& options) {
  if (options.radius >= 0) return options.radius;
  const double radius = std::ceil(3.0 * options.sigma_space);
  constexpr double beyond_index = 0x1p63;
  return radius < beyond_index ? static_cast<Index>(radius) : std::numeric_limits<Index>::max();
}

// Throws ArgumentError naming the first option the method cannot use.
inline void check_image_filter_options(const ImageFilterOptions& o) {
  using detail::require_argument;
  const bool needs_space =
      o.method == ImageFilterMethod::gaussian || o.method == ImageFilterMethod::bilateral;
  if (needs_space)
    require_argument(o.sigma_space > 0, "ImageFilterOptions::sigma_space",
                     detail::concat("> 0 for ", image_filter_name(o.method)), o.sigma_space);
  else
    require_argument(o.sigma_space >= 0, "ImageFilterOptions::sigma_space", ">= 0 (0: none)",
                     o.sigma_space);
  if (o.method == ImageFilterMethod::bilateral)
    require_argument(o.sigma_range > 0, "ImageFilterOptions::sigma_range", "> 0", o.sigma_range);
  if (o.method == ImageFilterMethod::nlm)
    require_argument(o.h > 0, "ImageFilterOptions::h", "> 0", o.h);
  if (o.method == ImageFilterMethod::attention)
    require_argument(o.temperature > 0, "ImageFilterOptions::temperature", "> 0", o.temperature);
  require_argument(o.patch_radius >= 0, "ImageFilterOptions::patch_radius", ">= 0", o.patch_radius);
  require_argument(o.radius >= 0 || o.sigma_space > 0, "ImageFilterOptions::radius",
                   ">= 0 (or sigma_space > 0 for the default ceil(3 sigma_space))", o.radius);
  require_argument(o.boost >= 0, "ImageFilterOptions::boost", ">= 0", o.boost);
  require_argument(o.boost <= k_max_boost, "ImageFilterOptions::boost",
                   detail::concat("<= ", k_max_boost, " (k_max_boost)"), o.boost);
}

inline bool uses_patches(ImageFilterMethod method) {
  return method == ImageFilterMethod::nlm || method == ImageFilterMethod::attention;
}

// Throws ArgumentError unless options that check_image_filter_options accepted fit an image of
// rows x cols: at least one pixel, and patches that reach at most one mirror image beyond the
// border (as PyTorch's reflect padding requires), so that they never outgrow the image.
inline void check_image_filter_size(const ImageFilterOptions& o, Index rows, Index cols) {
  detail::require_argument(rows > 0 && cols > 0, "image size", ">= 1 x 1",
                           detail::concat(rows, " x ", cols));
  if (uses_patches(o.method))
    detail::require_argument(
        o.patch_radius < std::min(rows, cols), "ImageFilterOptions::patch_radius",
        detail::concat("< ", std::min(rows, cols), " (the image's smaller side)"), o.patch_radius);
}

// numpy.pad's 'reflect' index: the image mirrored about its edge pixels, which are not
// repeated (-1 -> 1, n -> n - 2); periodic beyond one reflection, one pixel maps to 0.
inline Index reflect_index(Index i, Index n) {
  if (n == 1) return 0;
  const Index period = 2 * (n - 1);
  Index m = std::abs(i) % period;
  return m < n ? m : period - m;
}

// Row p of the result (p = r * W + c) is the (2 pr + 1)^2 pixels of the patch centred on
// (r, c), row-major, outside the image padded by reflect_index.
template <class T>
Matrix<T> image_patches(ConstMatrixRef<T> image, Index patch_radius) {
  detail::require_argument(patch_radius >= 0, "patch radius", ">= 0", patch_radius);
  const Index H = image.rows(), W = image.cols();
  const Index side = detail::checked_side(patch_radius, "patch radius");
  const Index pixels = detail::checked_mul(H, W, "image pixels");
  const Index per_patch = detail::checked_mul(side, side, "patch pixels");
  detail::checked_mul(pixels, per_patch, "image patches (pixels x patch pixels)");
  Matrix<T> patches(pixels, per_patch);
  for (Index r = 0; r < H; ++r)
    for (Index c = 0; c < W; ++c) {
      Index e = 0;
      for (Index dr = -patch_radius; dr <= patch_radius; ++dr)
        for (Index dc = -patch_radius; dc <= patch_radius; ++dc)
          patches(r * W + c, e++) = image(reflect_index(r + dr, H), reflect_index(c + dc, W));
    }
  return patches;
}

// One filter of one H x W image as an attention problem: the tokens (queries = keys), the
// values and the kernel. It copies what it needs from the image.
template <class T>
class ImageFilter {
 public:
  ImageFilter(ConstMatrixRef<T> image, const ImageFilterOptions& options)
      : options_(options), grid_{image.rows(), image.cols()} {
    check_image_filter_options(options);
    check_image_filter_size(options, image.rows(), image.cols());
    detail::require_argument(image.allFinite(), "image", "finite pixels", "NaN or Inf");
    values_ = Matrix<T>(grid_.tokens(), 1);
    for (Index r = 0; r < image.rows(); ++r)
      values_.col(0).segment(r * image.cols(), image.cols()) = image.row(r).transpose();
    const double side = 2.0 * static_cast<double>(options.patch_radius) + 1.0;
    const double n = side * side;  // pixels per patch (nlm, attention)
    switch (options.method) {
      case ImageFilterMethod::gaussian:
        range_ = {RangeKernelType::none, T(1), T(1)};
        break;
      case ImageFilterMethod::bilateral:
        range_ = {RangeKernelType::negative_squared_distance,
                  finite_scale<T>(0.5 / options.sigma_range / options.sigma_range), T(1)};
        break;
      case ImageFilterMethod::nlm:
        range_ = {RangeKernelType::negative_squared_distance,
                  finite_scale<T>(1.0 / n / options.h / options.h), T(1)};
        tokens_ = image_patches<T>(image, options.patch_radius);
        break;
      case ImageFilterMethod::attention: {
        tokens_ = image_patches<T>(image, options.patch_radius);
        // |P_i . P_j| <= max |P|^2: a temperature below this bound would overflow the scores.
        const double largest = static_cast<double>(tokens_.rowwise().squaredNorm().maxCoeff());
        const double smallest_temperature =
            largest / n / static_cast<double>(std::numeric_limits<T>::max()) * 2.0;
        detail::require_argument(
            options.temperature >= smallest_temperature, "ImageFilterOptions::temperature",
            detail::concat(">= ", smallest_temperature,
                           " for this image (a smaller one overflows the scores)"),
            options.temperature);
        range_ = dot_product_range<T>(finite_scale<T>(1.0 / n / options.temperature));
        break;
      }
    }
    if (options.sigma_space > 0 && options.method != ImageFilterMethod::nlm)
      terms_.push_back(std::make_shared<DistanceKernel<T>>(
          DistanceKernelOptions{DistanceKernelType::gaussian, grid_},
          Vector<T>::Constant(1, static_cast<T>(options.sigma_space))));
  }

  const Grid2d& grid() const { return grid_; }
  const ImageFilterOptions& options() const { return options_; }
  // The search window's radius, at most the image's larger side: the same window as any
  // larger radius (the whole image).
  Index radius() const {
    return std::min(image_filter_radius(options_), std::max(grid_.height, grid_.width));
  }
  // Queries = keys: pixels (gaussian, bilateral) or patches (nlm, attention), one per row.
  ConstMatrixRef<T> tokens() const { return tokens_.size() ? tokens_ : values_; }
  // The pixels, one per row (H W x 1).
  ConstMatrixRef<T> values() const { return values_; }

  // The kernel's factors; it points into this filter, so it lives no longer than it.
  AttentionKernel<T> kernel() const {
    AttentionKernel<T> kernel{range_, terms_.empty() ? nullptr : &terms_};
    kernel.window = LocalWindow{radius(), grid_};
    kernel.boost = options_.boost;
    return kernel;
  }

  HeadInputs<T> head() const { return {0, 0, tokens(), tokens(), values()}; }

  // The filtered image (H x W), computed by the fused engine with options().fused.
  Matrix<T> run() const {
    Matrix<T> out(grid_.tokens(), 1);
    fused_attention<T>(head(), kernel(), out, options_.fused);
    return Eigen::Map<const Matrix<T>>(out.data(), grid_.height, grid_.width);
  }

  // The filtered image and the smoother A (H W x H W) from the reference engine: small images.
  Matrix<T> run_reference(Matrix<T>* weights = nullptr) const {
    Matrix<T> A(grid_.tokens(), grid_.tokens()), out(grid_.tokens(), 1);
    reference_attention<T>(head(), kernel(), A, out);
    if (weights) *weights = std::move(A);
    return Eigen::Map<const Matrix<T>>(out.data(), grid_.height, grid_.width);
  }

 private:
  ImageFilterOptions options_;
  Grid2d grid_;
  Matrix<T> values_;
  Matrix<T> tokens_;  // empty: the pixels are the tokens
  RangeKernel<T> range_;
  ScoreTerms<T> terms_;
};

// The image (H x W, intensities in [0, 1]) filtered by options.method, on the fused engine.
template <class T>
Matrix<T> filter_image(ConstMatrixRef<T> image, const ImageFilterOptions& options) {
  return ImageFilter<T>(image, options).run();
}

}  // namespace attnlens
