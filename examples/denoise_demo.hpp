// The denoising comparison of the demo (docs/image-filtering.md): camera.png with Gaussian
// noise of sigma 10, 25, 50 (/255), filtered by the attention engine with the kernels of a
// Gaussian filter, a bilateral filter, non-local means, dot-product self-attention and
// bilateral self-attention, each plain and with twicing; a PSNR/SSIM table, PNGs, a montage,
// the time per method, and (--denoise-search) the grid search that chose the parameters.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "attnlens/image/image_filter.hpp"
#include "attnlens/image/image_quality.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/io/png.hpp"

namespace attnlens::demo {

struct DenoiseMethod {
  const char* label;  // file name and table row
  ImageFilterOptions options;
};

inline ImageFilterOptions filter_options(ImageFilterMethod method, double sigma_space,
                                         double parameter, Index patch_radius, Index radius,
                                         Index boost) {
  ImageFilterOptions o;
  o.method = method;
  o.sigma_space = sigma_space;
  o.sigma_range = o.h = o.temperature = parameter;
  o.patch_radius = patch_radius;
  o.radius = radius;
  o.boost = boost;
  return o;
}

// The parameters of the best PSNR in the grid search (run_denoise_search, on the central
// 256 x 256 crop of camera.png) for each noise level, plain (boost 0) and with twicing
// (boost 1); nlm and the attention kernels use the window radius 10 and 7 x 7 patches.
inline std::vector<DenoiseMethod> chosen_methods(int noise, Index boost) {
  using M = ImageFilterMethod;
  struct Row {
    int noise;
    Index boost;
    double gaussian_s, bilateral_s, bilateral_r, nlm_h, attention_t, battention_s, battention_t;
  };
  // clang-format off
  static const Row rows[] = {
      {10, 0, 0.5,  1.0, 0.118, 0.039, 0.3, 0.75, 0.3},
      {10, 1, 0.75, 1.5, 0.118, 0.047, 0.1, 0.75, 0.1},
      {25, 0, 0.75, 1.5, 0.294, 0.098, 0.3, 0.75, 0.3},
      {25, 1, 1.0,  1.5, 0.392, 0.118, 0.1, 1.0,  0.1},
      {50, 0, 1.5,  1.5, 0.784, 0.157, 0.3, 1.5,  0.3},
      {50, 1, 1.5,  2.0, 1.176, 0.196, 0.1, 1.5,  0.3},
  };
  // clang-format on
  for (const Row& r : rows)
    if (r.noise == noise && r.boost == boost)
      return {
          {"gaussian", filter_options(M::gaussian, r.gaussian_s, 0, 0, -1, boost)},
          {"bilateral", filter_options(M::bilateral, r.bilateral_s, r.bilateral_r, 0, -1, boost)},
          {"nlm", filter_options(M::nlm, 0, r.nlm_h, 3, 10, boost)},
          {"attention", filter_options(M::attention, 0, r.attention_t, 3, 10, boost)},
          {"bilateral_attention",
           filter_options(M::attention, r.battention_s, r.battention_t, 3, 10, boost)},
      };
  throw ArgumentError(detail::concat("no chosen parameters for noise ", noise));
}

inline std::string describe(const ImageFilterOptions& o) {
  char text[160];
  const long R = static_cast<long>(image_filter_radius(o));
  switch (o.method) {
    case ImageFilterMethod::gaussian:
      std::snprintf(text, sizeof text, "s=%g, R=%ld", o.sigma_space, R);
      break;
    case ImageFilterMethod::bilateral:
      std::snprintf(text, sizeof text, "s=%g, r=%g, R=%ld", o.sigma_space, o.sigma_range, R);
      break;
    case ImageFilterMethod::nlm:
      std::snprintf(text, sizeof text, "h=%g, pr=%ld, R=%ld", o.h,
                    static_cast<long>(o.patch_radius), R);
      break;
    case ImageFilterMethod::attention:
      if (o.sigma_space > 0)
        std::snprintf(text, sizeof text, "t=%g, s=%g, pr=%ld, R=%ld", o.temperature, o.sigma_space,
                      static_cast<long>(o.patch_radius), R);
      else
        std::snprintf(text, sizeof text, "t=%g, pr=%ld, R=%ld", o.temperature,
                      static_cast<long>(o.patch_radius), R);
      break;
  }
  return text;
}

// The clean image plus N(0, (noise / 255)^2), not clipped; the seed is the noise level.
inline Matrix<double> add_noise(const Matrix<double>& clean, int noise) {
  Rng rng(static_cast<std::uint64_t>(noise));
  Matrix<double> noisy = clean;
  for (Index p = 0; p < noisy.size(); ++p)
    noisy.data()[p] += rng.normal<double>(0.0, noise / 255.0);
  return noisy;
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Pictures side by side: a grid of equal crops with white gaps.
class Montage {
 public:
  Montage(Index rows, Index cols, Index size, Index gap)
      : size_(size),
        gap_(gap),
        canvas_(Matrix<double>::Ones(rows * (size + gap) - gap, cols * (size + gap) - gap)) {}
  void put(Index row, Index col, const Matrix<double>& crop) {
    canvas_.block(row * (size_ + gap_), col * (size_ + gap_), size_, size_) = crop;
  }
  const Matrix<double>& canvas() const { return canvas_; }

 private:
  Index size_, gap_;
  Matrix<double> canvas_;
};

inline void run_denoise_comparison(const std::string& camera, const std::string& pictures,
                                   int threads) {
  std::printf(
      "\n5. Denoising camera.png with the attention engine (identity projections, tokens = "
      "pixels)\n");
  const Matrix<double> clean = io::read_png_gray(camera);
  const std::string dir = pictures + "/denoise";
  std::filesystem::create_directories(dir);
  // The crop shown in the montage: the photographer's head and camera.
  const Index top = 60, left = 150, size = 192;
  const auto crop = [&](const Matrix<double>& m) { return m.block(top, left, size, size).eval(); };

  std::printf("   | noise | method | parameters | PSNR (dB) | SSIM |\n");
  std::printf("   |---|---|---|---|---|\n");
  for (int noise : {10, 25, 50}) {
    const Matrix<double> noisy = add_noise(clean, noise);
    io::write_png_gray(dir + "/sigma" + std::to_string(noise) + "_noisy.png", noisy);
    std::printf("   | %d | noisy | | %.2f | %.4f |\n", noise, psnr<double>(clean, noisy),
                ssim<double>(clean, noisy));
    Montage montage(2, 7, size, 4);
    montage.put(0, 0, crop(clean));
    montage.put(0, 1, crop(noisy));
    for (Index boost : {0, 1}) {
      Index column = 2;
      for (DenoiseMethod m : chosen_methods(noise, boost)) {
        m.options.fused.parallel.threads = threads;
        const Matrix<double> out = filter_image<double>(noisy, m.options);
        const std::string name = std::string(m.label) + (boost ? "_twicing" : "");
        io::write_png_gray(dir + "/sigma" + std::to_string(noise) + "_" + name + ".png", out);
        std::printf("   | %d | %s | %s | %.2f | %.4f |\n", noise, name.c_str(),
                    describe(m.options).c_str(), psnr<double>(clean, out),
                    ssim<double>(clean, out));
        montage.put(boost, column++, crop(out));
      }
    }
    io::write_png_gray(dir + "/montage_sigma" + std::to_string(noise) + ".png", montage.canvas());
  }
  std::printf(
      "   Montages %s/montage_sigma{10,25,50}.png: top clean, noisy, gaussian, bilateral, nlm,\n"
      "   attention, bilateral attention; bottom the same filters with twicing.\n",
      dir.c_str());

  // The acceptance timing: camera.png at noise 25, window radius 10, 7 x 7 patches.
  const Matrix<double> noisy = add_noise(clean, 25);
  std::printf(
      "   Time on 512 x 512 at noise 25, window radius 10, %d threads (best of 2 runs, 1 with "
      "boost):\n",
      thread_count({threads}));
  for (DenoiseMethod m : chosen_methods(25, 0))
    for (Index boost : {0, 1}) {
      m.options.radius = 10;
      m.options.boost = boost;
      m.options.fused.parallel.threads = threads;
      double best = 1e30, cpu = 0;
      for (int repeat = 0; repeat < (boost ? 1 : 2); ++repeat) {
        const auto start = std::chrono::steady_clock::now();
        const std::clock_t cpu_start = std::clock();
        const Matrix<double> out = filter_image<double>(noisy, m.options);
        const double wall = seconds_since(start);
        if (wall < best)
          best = wall, cpu = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        if (!out.allFinite()) std::printf("   non-finite output!\n");
      }
      // CPU time / threads is the wall time the run would take on otherwise idle cores.
      std::printf("   %-20s boost %ld: %.2f s (CPU %.2f s)\n", m.label, static_cast<long>(boost),
                  best, cpu);
    }
}

// The grid search behind chosen_methods: the best PSNR of each method over a small grid on
// the central 256 x 256 crop of camera.png, per noise level, plain and with twicing.
inline void run_denoise_search(const std::string& camera, int threads) {
  using M = ImageFilterMethod;
  // The central 256 x 256 crop keeps the search to minutes.
  const Matrix<double> clean = io::read_png_gray(camera).block(128, 128, 256, 256);
  for (int noise : {10, 25, 50}) {
    const double sn = noise / 255.0;
    const Matrix<double> noisy = add_noise(clean, noise);
    for (Index boost : {0, 1}) {
      std::vector<std::pair<const char*, std::vector<ImageFilterOptions>>> grids(5);
      grids[0].first = "gaussian";
      for (double s : {0.5, 0.75, 1.0, 1.5, 2.0, 3.0})
        grids[0].second.push_back(filter_options(M::gaussian, s, 0, 0, -1, boost));
      grids[1].first = "bilateral";
      for (double s : {1.0, 1.5, 2.0, 3.0})
        for (double k : {0.8, 1.2, 1.6, 2.0, 3.0, 4.0, 6.0, 8.0})
          grids[1].second.push_back(
              filter_options(M::bilateral, s, std::round(k * sn * 1000) / 1000, 0, -1, boost));
      grids[2].first = "nlm";
      for (double k : {0.4, 0.6, 0.8, 1.0, 1.2, 1.6})
        grids[2].second.push_back(
            filter_options(M::nlm, 0, std::round(k * sn * 1000) / 1000, 3, 10, boost));
      grids[3].first = "attention";
      grids[4].first = "bilateral_attention";
      // exp(P_i.P_j / (n t)) is nlm with h^2 = 2 t times exp(|P_j|^2 / (2 n t)), which favours
      // bright keys: it needs far larger t than nlm's h^2 / 2.
      for (double t : {0.003, 0.01, 0.03, 0.1, 0.3, 1.0}) {
        grids[3].second.push_back(filter_options(M::attention, 0, t, 3, 10, boost));
        for (double s : {0.75, 1.0, 1.5, 3.0})
          grids[4].second.push_back(filter_options(M::attention, s, t, 3, 10, boost));
      }
      for (auto& [label, grid] : grids) {
        double best = -1;
        std::string best_text;
        for (ImageFilterOptions o : grid) {
          o.fused.parallel.threads = threads;
          const double p = psnr<double>(clean, filter_image<double>(noisy, o));
          std::printf("   noise %d boost %ld %s %s: %.2f dB\n", noise, static_cast<long>(boost),
                      label, describe(o).c_str(), p);
          if (p > best) best = p, best_text = describe(o);
        }
        std::printf("BEST noise %d boost %ld %s: %s %.2f dB\n", noise, static_cast<long>(boost),
                    label, best_text.c_str(), best);
        std::fflush(stdout);
      }
    }
  }
}

}  // namespace attnlens::demo
