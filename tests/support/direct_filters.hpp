// Plain-loop image filters in double, written from the formulas of issue 5 / docs/math.md section 2
// without the attention engine: the yardstick for attnlens::ImageFilter and `attnlens denoise`.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::testing {

struct DirectFilter {
  std::string method;  // gaussian, bilateral, nlm, attention
  double sigma_space = 0, sigma_range = 0, h = 0, temperature = 0;
  int patch_radius = 0, radius = 0, boost = 0;
};

// numpy.pad(mode='reflect'), reflecting again until the index is inside.
inline int numpy_reflect(int i, int n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

// The (2 pr + 1)^2 pixels around (r, c), row-major.
inline std::vector<double> patch_at(const Matrix<double>& y, int r, int c, int pr) {
  std::vector<double> patch;
  const int H = static_cast<int>(y.rows()), W = static_cast<int>(y.cols());
  for (int dr = -pr; dr <= pr; ++dr)
    for (int dc = -pr; dc <= pr; ++dc)
      patch.push_back(y(numpy_reflect(r + dr, H), numpy_reflect(c + dc, W)));
  return patch;
}

// K(i, j) of the filter for pixels i = (r, c), j = (r2, c2) of the noisy image y.
inline double direct_kernel(const DirectFilter& f, const Matrix<double>& y, int r, int c, int r2,
                            int c2) {
  const double d2 = (r2 - r) * (r2 - r) + (c2 - c) * (c2 - c);
  const double domain =
      f.sigma_space > 0 ? std::exp(-d2 / (2 * f.sigma_space * f.sigma_space)) : 1.0;
  if (f.method == "gaussian") return domain;
  if (f.method == "bilateral") {
    const double dy = y(r, c) - y(r2, c2);
    return domain * std::exp(-dy * dy / (2 * f.sigma_range * f.sigma_range));
  }
  const auto p = patch_at(y, r, c, f.patch_radius), q = patch_at(y, r2, c2, f.patch_radius);
  const double n = static_cast<double>(p.size());
  double dist = 0, dot = 0;
  for (std::size_t e = 0; e < p.size(); ++e) {
    dist += (p[e] - q[e]) * (p[e] - q[e]);
    dot += p[e] * q[e];
  }
  if (f.method == "nlm") return std::exp(-dist / (n * f.h * f.h));
  return domain * std::exp(dot / (n * f.temperature));  // attention
}

// z_0 = A y, z_{m+1} = z_m + A (y - z_m), with A_ij = K_ij / sum_j K_ij over the window
// |dr|, |dc| <= radius inside the image.
inline Matrix<double> direct_filter(const Matrix<double>& y, const DirectFilter& f) {
  const int H = static_cast<int>(y.rows()), W = static_cast<int>(y.cols()), R = f.radius;
  // The weights of every pixel's window, computed once from y.
  std::vector<std::vector<double>> weights(static_cast<std::size_t>(H * W));
  for (int r = 0; r < H; ++r)
    for (int c = 0; c < W; ++c) {
      auto& w = weights[static_cast<std::size_t>(r * W + c)];
      double sum = 0;
      for (int r2 = r - R; r2 <= r + R; ++r2)
        for (int c2 = c - R; c2 <= c + R; ++c2) {
          const bool inside = r2 >= 0 && r2 < H && c2 >= 0 && c2 < W;
          w.push_back(inside ? direct_kernel(f, y, r, c, r2, c2) : 0.0);
          sum += w.back();
        }
      for (double& v : w) v /= sum;
    }
  const auto smooth = [&](const Matrix<double>& v) {
    Matrix<double> out = Matrix<double>::Zero(H, W);
    for (int r = 0; r < H; ++r)
      for (int c = 0; c < W; ++c) {
        std::size_t k = 0;
        for (int r2 = r - R; r2 <= r + R; ++r2)
          for (int c2 = c - R; c2 <= c + R; ++c2, ++k)
            if (r2 >= 0 && r2 < H && c2 >= 0 && c2 < W)
              out(r, c) += weights[static_cast<std::size_t>(r * W + c)][k] * v(r2, c2);
      }
    return out;
  };
  Matrix<double> z = smooth(y);
  for (int m = 0; m < f.boost; ++m) z += smooth(y - z);
  return z;
}

// A test picture in [0, 1]: a bright square and a ramp with noise, quantized to k / 255 so a
// PNG holds it exactly.
inline Matrix<double> test_picture(Index H, Index W, std::uint64_t seed) {
  Rng rng(seed);
  Matrix<double> y(H, W);
  for (Index r = 0; r < H; ++r)
    for (Index c = 0; c < W; ++c) {
      const bool square = r > H / 4 && r < 3 * H / 4 && c > W / 3 && c < 5 * W / 6;
      const double v = (square ? 0.7 : 0.2) +
                       0.2 * static_cast<double>(c) / static_cast<double>(W) +
                       rng.normal<double>(0.0, 0.08);
      y(r, c) = std::round(255.0 * std::min(1.0, std::max(0.0, v))) / 255.0;
    }
  return y;
}

}  // namespace attnlens::testing
