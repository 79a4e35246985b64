// attnlens grad: the gradients of an exported encoder (a model directory, docs/model-format.md)
// for an input and an upstream gradient, computed by the backward passes (docs/gradients.md):
// every parameter's under its state_dict name, and the input's as `src`.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/safetensors.hpp"
#include "cli/checks.hpp"
#include "cli/encoder_input.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

struct GradArguments {
  std::string model, input, output, grad_output;
  bool use_double = false;
  std::string engine = "reference";
};

namespace detail_grad {

template <class T>
void run(const GradArguments& args) {
  const auto encoder = io::load_encoder_model<T>(args.model);
  const auto [src, mask] = read_encoder_input(encoder, args.input);
  EncoderForwardOptions forward;
  forward.engine = args.engine == "fused" ? AttentionEngine::fused : AttentionEngine::reference;
  EncoderCache<T> cache;
  const auto result = encoder.forward(src, mask, forward, &cache);
  // dL/doutput: the file's `output`, or all ones (L = the sum of the output).
  Tensor<T> doutput(result.output.shape());
  if (args.grad_output.empty()) {
    for (T& v : doutput.storage()) v = T(1);
  } else {
    const auto file = io::SafeTensors::load(args.grad_output);
    require_known_tensors(file, args.grad_output, {"output"});
    doutput = file.get<T>("output");
    detail::require_shape(
        doutput.shape() == result.output.shape(), "tensor 'output' of --grad-output",
        detail::shape_string(result.output.shape()), detail::shape_string(doutput.shape()));
  }
  TransformerEncoder<T> gradient = zeros_like(encoder);
  const Tensor<T> dsrc = encoder.backward(cache, doutput, gradient);
  io::SafeTensorsWriter output = io::module_weights(gradient);
  output.add("src", dsrc);
  output.save(args.output);
}

}  // namespace detail_grad

inline void add_grad_command(CLI::App& app) {
  auto args = std::make_shared<GradArguments>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "Gradients of an exported torch.nn.TransformerEncoder (docs/gradients.md)");
  cmd->add_option("--model", args->model,
                  "Model directory: config.json and model.safetensors (docs/model-format.md)")
      ->required();
  cmd->add_option("--input", args->input,
                  "src [B,L,E]; optional src_key_padding_mask [B,L] (True = ignore), mask "
                  "[L,L] or [B*H,L,L] (bool True = not allowed, or float added), as for encode")
      ->required();
  cmd->add_option("--output", args->output,
                  "Output file: every parameter's gradient under its state_dict name, and src "
                  "[B,L,E] (the input's)")
      ->required();
  cmd->add_option(
      "--grad-output", args->grad_output,
      "The upstream gradient: output [B,L,E] (default all ones: L = sum of the output)");
  cmd->add_flag("--double", args->use_double, "Compute and write in float64 (default float32)");
  cmd->add_option("--engine", args->engine,
                  "Attention engine of the forward and backward passes: reference, or fused "
                  "(tiled, O(L d) memory)")
      ->check(CLI::IsMember({"reference", "fused"}))
      ->capture_default_str();
  cmd->callback([args] {
    run_reporting_errors("grad", [&] {
      if (args->use_double)
        detail_grad::run<double>(*args);
      else
        detail_grad::run<float>(*args);
    });
  });
}

}  // namespace attnlens::cli
