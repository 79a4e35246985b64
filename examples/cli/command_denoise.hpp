// attnlens denoise: a grayscale image filtered by the attention engine with identity
// projections (tokens = pixels): Gaussian, bilateral, non-local means or dot-product attention
// kernels, optionally boosted (twicing = --boost 1); docs/math.md section 2,
// docs/image-filtering.md.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "attnlens/core/init.hpp"
#include "attnlens/image/image_filter.hpp"
#include "attnlens/image/image_quality.hpp"
#include "attnlens/io/png.hpp"
#include "attnlens/io/safetensors.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

struct DenoiseArguments {
  std::string input, output, clean, method;
  ImageFilterOptions filter;
  double add_noise = -1;  // < 0: none
  std::uint64_t seed = 0;
  int threads = 0;
  // The options given on the command line, to reject those the method does not use.
  std::map<std::string, const CLI::Option*> given;
};

namespace detail_denoise {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline bool given(const DenoiseArguments& args, const std::string& name) {
  return args.given.at(name)->count() > 0;
}

// Throws ArgumentError for an option the method does not use or a missing one it needs.
inline void check_method_options(const DenoiseArguments& args) {
  const auto method = args.filter.method;
  const std::string name = image_filter_name(method);
  const auto reject = [&](const std::string& option) {
    if (given(args, option)) throw ArgumentError(option + " does not apply to --method " + name);
  };
  if (method != ImageFilterMethod::bilateral) reject("--sigma-range");
  if (method != ImageFilterMethod::nlm) reject("--h");
  if (method != ImageFilterMethod::attention) reject("--temperature");
  if (method == ImageFilterMethod::gaussian || method == ImageFilterMethod::bilateral) {
    reject("--patch-radius");
    if (!given(args, "--sigma-space"))
      throw ArgumentError("--method " + name + " needs --sigma-space");
  }
  if (method == ImageFilterMethod::nlm) reject("--sigma-space");
  if (!given(args, "--radius") && !given(args, "--sigma-space"))
    throw ArgumentError("--method " + name + " needs --radius (the search window)");
  if (given(args, "--seed") && !given(args, "--add-noise"))
    throw ArgumentError("--seed needs --add-noise");
  if (!ends_with(args.output, ".png") && !ends_with(args.output, ".safetensors"))
    throw ArgumentError("--output: expected a .png or .safetensors file, got '" + args.output +
                        "'");
}

// Runs `make`, naming the command-line option in its ArgumentErrors where the library names
// the ImageFilterOptions field: ImageFilterOptions::patch_radius is --patch-radius.
template <class Make>
auto with_option_names(Make&& make) {
  try {
    return make();
  } catch (const ArgumentError& e) {
    const std::string prefix = "ImageFilterOptions::";
    std::string message = e.what();
    if (message.compare(0, prefix.size(), prefix) != 0) throw;
    const std::size_t end = message.find(':', prefix.size());
    if (end == std::string::npos) throw;
    std::string option = "--" + message.substr(prefix.size(), end - prefix.size());
    std::replace(option.begin(), option.end(), '_', '-');
    throw ArgumentError(option + message.substr(end));
  }
}

// The filter's memory in doubles, as an estimate in double (no overflow): the image, the
// output and its boosting copies, and for nlm and attention one patch of (2 pr + 1)^2 pixels
// per pixel.
inline double filter_bytes(const ImageFilterOptions& options, Index rows, Index cols) {
  const double pixels = static_cast<double>(rows) * static_cast<double>(cols);
  const double side = 2.0 * static_cast<double>(options.patch_radius) + 1.0;
  return sizeof(double) * pixels * (6.0 + (uses_patches(options.method) ? side * side : 0.0));
}

inline void print_quality(const char* what, const Matrix<double>& clean,
                          const Matrix<double>& image) {
  std::printf("%s PSNR %.2f dB, SSIM %.4f\n", what, psnr<double>(clean, image),
              ssim<double>(clean, image));
}

inline void run(const DenoiseArguments& args) {
  check_method_options(args);
  const Matrix<double> original = io::read_png_gray(args.input);
  Matrix<double> clean;
  if (!args.clean.empty()) {
    clean = io::read_png_gray(args.clean);
    detail::require_shape(clean.rows() == original.rows() && clean.cols() == original.cols(),
                          "--clean image",
                          detail::concat(original.rows(), " x ", original.cols(), " like --input"),
                          detail::concat(clean.rows(), " x ", clean.cols()));
  } else if (args.add_noise >= 0) {
    clean = original;  // the input before the noise is the reference
  }
  Matrix<double> noisy = original;
  if (args.add_noise >= 0) {
    Rng rng(args.seed);
    const double sigma = args.add_noise / 255.0;
    for (Index p = 0; p < noisy.size(); ++p) noisy.data()[p] += rng.normal<double>(0.0, sigma);
  }

  ImageFilterOptions options = args.filter;
  options.fused.parallel.threads = args.threads;
  const ImageFilter<double> filter = with_option_names([&] {
    check_image_filter_options(options);
    check_image_filter_size(options, noisy.rows(), noisy.cols());
    require_memory(
        filter_bytes(options, noisy.rows(), noisy.cols()),
        detail::concat("--method ", image_filter_name(options.method), " on ", noisy.rows(), " x ",
                       noisy.cols(), " pixels with --patch-radius ", options.patch_radius));
    return ImageFilter<double>(noisy, options);
  });
  const auto start = std::chrono::steady_clock::now();
  const Matrix<double> output = filter.run();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (ends_with(args.output, ".png")) {
    io::write_png_gray(args.output, output);
  } else {
    io::SafeTensorsWriter writer;
    writer.add("image", Tensor<float>::from_matrix(output.cast<float>()));
    writer.save(args.output);
  }
  std::printf("denoise %s: %ld x %ld pixels, window radius %ld, boost %ld, %d threads: %.3f s\n",
              image_filter_name(options.method), static_cast<long>(output.rows()),
              static_cast<long>(output.cols()), static_cast<long>(filter.radius()),
              static_cast<long>(options.boost), thread_count(options.fused.parallel), seconds);
  if (clean.size()) {
    print_quality("input: ", clean, noisy);
    print_quality("output:", clean, output);
  }
}

}  // namespace detail_denoise

inline void add_denoise_command(CLI::App& app) {
  auto args = std::make_shared<DenoiseArguments>();
  CLI::App* cmd = app.add_subcommand(
      "denoise",
      "Filter a grayscale PNG with the attention engine (identity projections, tokens = pixels)");
  auto& given = args->given;
  ImageFilterOptions& f = args->filter;
  cmd->add_option("--input", args->input,
                  "Input PNG; intensities in [0, 1] (8-bit / 255), colour as BT.709 luma")
      ->required();
  cmd->add_option("--method", args->method,
                  "gaussian, bilateral, nlm (non-local means) or attention (dot product)")
      ->required()
      ->check(CLI::IsMember(names_of(k_image_filter_names)));
  given["--sigma-space"] =
      cmd->add_option("--sigma-space", f.sigma_space,
                      "s: Gaussian domain kernel exp(-|delta|^2 / (2 s^2)) in pixels (gaussian, "
                      "bilateral; optional for attention)")
          ->check(k_positive_number);
  given["--sigma-range"] =
      cmd->add_option("--sigma-range", f.sigma_range,
                      "r: bilateral range kernel exp(-(y_i - y_j)^2 / (2 r^2)) (default 0.1)")
          ->check(k_positive_number);
  given["--patch-radius"] =
      cmd->add_option("--patch-radius", f.patch_radius,
                      "pr: patches of (2 pr + 1)^2 pixels, reflected at the border (nlm, "
                      "attention; default 3)")
          ->check(k_non_negative_number);
  given["--h"] = cmd->add_option("--h", f.h,
                                 "h: nlm kernel exp(-|P_i - P_j|^2 / (n h^2)), n pixels per patch "
                                 "(default 0.1)")
                     ->check(k_positive_number);
  given["--temperature"] =
      cmd->add_option("--temperature", f.temperature,
                      "t: attention kernel exp(P_i . P_j / (n t)) (default 0.1)")
          ->check(k_positive_number);
  given["--radius"] =
      cmd->add_option("--radius", f.radius,
                      "R: keys in the window |dr|, |dc| <= R (default ceil(3 sigma_space))")
          ->check(k_non_negative_number);
  given["--boost"] = cmd->add_option("--boost", f.boost,
                                     "k: boosting order, z_{m+1} = z_m + A (y - z_m); 1 is "
                                     "twicing (default 0)")
                         ->check(k_non_negative_number);
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->check(k_non_negative_number);
  cmd->add_option("--output", args->output,
                  "Output: .png (8-bit, rounded, clipped) or .safetensors (float32 'image', H x W)")
      ->required();
  cmd->add_option("--clean", args->clean, "Clean PNG: print PSNR and SSIM of input and output");
  given["--add-noise"] =
      cmd->add_option("--add-noise", args->add_noise,
                      "Add Gaussian noise of standard deviation SIGMA / 255 before filtering "
                      "(not clipped; the original is the reference unless --clean is given)")
          ->check(k_non_negative_number);
  given["--seed"] = cmd->add_option("--seed", args->seed, "Seed of the noise (default 0)");
  cmd->callback([args] {
    run_reporting_errors("denoise", [&] {
      args->filter.method = value_named(k_image_filter_names, args->method, "--method");
      detail_denoise::run(*args);
    });
  });
}

}  // namespace attnlens::cli
