// attnlens conv: a K x K convolution computed as multi-head self-attention with the quadratic
// encoding (Cordonnier et al., docs/math.md section 4); --check compares with the direct
// convolution.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>

#include "attnlens/interpret/conv_as_attention.hpp"
#include "attnlens/io/safetensors.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

struct ConvArguments {
  std::string input, output;
  double alpha = 20.0;
  bool check = false, use_double = false;
};

namespace detail_conv {

template <class T>
void run(const ConvArguments& args) {
  const auto input = io::SafeTensors::load(args.input);
  require_known_tensors(input, args.input, {"weight", "bias", "input"});
  const Tensor<T> weight = input.get<T>("weight"), bias = input.get<T>("bias");
  const Tensor<T> image = input.get<T>("input");
  detail::require_shape(image.rank() == 3, "tensor 'input'", "[D_in, H, W]",
                        detail::shape_string(image.shape()));
  const ConvAsAttention<T> layer(weight, bias, {image.dim(1), image.dim(2), args.alpha});
  const Tensor<T> output = layer.forward(image);
  io::SafeTensorsWriter writer;
  writer.add("output", output);
  writer.save(args.output);
  if (args.check) {
    const Tensor<T> direct = conv2d_same(weight, bias, image);
    // NaN-aware: a NaN anywhere is the difference, never skipped by max.
    double worst = 0.0;
    for (Index i = 0; i < output.size() && !std::isnan(worst); ++i) {
      const double difference = std::abs(static_cast<double>(output.data()[i]) - direct.data()[i]);
      worst = std::isnan(difference) ? difference : std::max(worst, difference);
    }
    if (!std::isfinite(worst))
      throw ArgumentError(
          detail::concat("--check: expected a finite output, got a difference of ", worst));
    std::cout << "max abs difference from the direct convolution: " << worst << '\n';
  }
}

}  // namespace detail_conv

inline void add_conv_command(CLI::App& app) {
  auto args = std::make_shared<ConvArguments>();
  CLI::App* cmd = app.add_subcommand(
      "conv", "Compute a convolution as multi-head attention (quadratic encoding, K^2 heads)");
  cmd->add_option("--input", args->input,
                  "weight [D_out, D_in, K, K] (K odd), bias [D_out], input [D_in, H, W]")
      ->required();
  cmd->add_option("--output", args->output, "Output file: output [D_out, H, W]")->required();
  cmd->add_option("--alpha", args->alpha, "Head width alpha (default 20: float precision)")
      ->check(k_positive_number);
  cmd->add_flag("--check", args->check, "Print the max abs difference from a direct convolution");
  cmd->add_flag("--double", args->use_double, "Compute and write in float64 (default float32)");
  cmd->callback([args] {
    run_reporting_errors("conv", [&] {
      if (args->use_double)
        detail_conv::run<double>(*args);
      else
        detail_conv::run<float>(*args);
    });
  });
}

}  // namespace attnlens::cli
