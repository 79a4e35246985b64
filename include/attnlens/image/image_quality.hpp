// How close a filtered image is to the clean one (image_filter.hpp, docs/image-filtering.md):
// PSNR = 10 log10(range^2 / MSE), and SSIM as defined by Wang, Bovik, Sheikh and Simoncelli
// (IEEE TIP 2004) with their reference implementation's choices, listed in SsimOptions.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

namespace detail {

template <class T>
void require_same_image_size(ConstMatrixRef<T> a, ConstMatrixRef<T> b, const char* what) {
  require_shape(a.rows() == b.rows() && a.cols() == b.cols(), what,
                concat(a.rows(), " x ", a.cols(), " (like the reference)"),
                concat(b.rows(), " x ", b.cols()));
  require_argument(a.size() > 0, what, "a non-empty image", "0 pixels");
}

}  // namespace detail

// Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE); +inf for equal images.
template <class T>
double psnr(ConstMatrixRef<T> reference, ConstMatrixRef<T> image, double data_range = 1.0) {
  detail::require_same_image_size<T>(reference, image, "psnr image");
  const double mse =
      (reference.template cast<double>() - image.template cast<double>()).squaredNorm() /
      static_cast<double>(reference.size());
  if (mse == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(data_range * data_range / mse);
}

// Wang et al. 2004: an 11 x 11 Gaussian window with sigma 1.5 (normalized to sum 1),
// C1 = (K1 L)^2, C2 = (K2 L)^2, population (1/N) variances, and the mean of the SSIM map over
// the positions where the window lies inside the image (MATLAB's filter2 'valid'). This is
// skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False,
// data_range=1), not its default (a 7 x 7 uniform window with sample covariances).
struct SsimOptions {
  Index window_radius = 5;  // 11 x 11
  double sigma = 1.5;
  double k1 = 0.01;
  double k2 = 0.03;
  double data_range = 1.0;
};

template <class T>
double ssim(ConstMatrixRef<T> reference, ConstMatrixRef<T> image, const SsimOptions& options = {}) {
  detail::require_same_image_size<T>(reference, image, "ssim image");
  const Index R = options.window_radius, side = 2 * R + 1;
  detail::require_argument(R >= 0, "SsimOptions::window_radius", ">= 0", R);
  detail::require_argument(options.sigma > 0, "SsimOptions::sigma", "> 0", options.sigma);
  detail::require_argument(reference.rows() >= side && reference.cols() >= side, "ssim image size",
                           detail::concat(">= ", side, " x ", side, " (the window)"),
                           detail::concat(reference.rows(), " x ", reference.cols()));
  std::vector<double> window(static_cast<std::size_t>(side));
  double total = 0;
  for (Index k = -R; k <= R; ++k)
    total += window[static_cast<std::size_t>(k + R)] =
        std::exp(-static_cast<double>(k * k) / (2 * options.sigma * options.sigma));
  for (double& w : window) w /= total;

  const Matrix<double> x = reference.template cast<double>(), y = image.template cast<double>();
  // The window is separable: filter the columns, then the rows, keeping 'valid' positions.
  const auto filter = [&](const Matrix<double>& m) {
    const Index rows = m.rows() - side + 1, cols = m.cols() - side + 1;
    Matrix<double> vertical = Matrix<double>::Zero(rows, m.cols());
    for (Index k = 0; k < side; ++k)
      vertical += window[static_cast<std::size_t>(k)] * m.middleRows(k, rows);
    Matrix<double> both = Matrix<double>::Zero(rows, cols);
    for (Index k = 0; k < side; ++k)
      both += window[static_cast<std::size_t>(k)] * vertical.middleCols(k, cols);
    return both;
  };
  const Matrix<double> mu_x = filter(x), mu_y = filter(y);
  const Matrix<double> xx = filter(x.cwiseProduct(x)), yy = filter(y.cwiseProduct(y)),
                       xy = filter(x.cwiseProduct(y));
  const double c1 = std::pow(options.k1 * options.data_range, 2);
  const double c2 = std::pow(options.k2 * options.data_range, 2);
  const auto mx = mu_x.array(), my = mu_y.array();
  const auto var_x = xx.array() - mx.square(), var_y = yy.array() - my.square();
  const auto cov = xy.array() - mx * my;
  const auto map = ((2 * mx * my + c1) * (2 * cov + c2)) /
                   ((mx.square() + my.square() + c1) * (var_x + var_y + c2));
  return map.mean();
}

}  // namespace attnlens
