// attnlens encode: a torch.nn.TransformerEncoder exported with examples/export_pytorch.py
// (a model directory, docs/model-format.md) run on inputs saved from PyTorch, with PyTorch's
// mask conventions, or a vision transformer's directory run on images (cli/image_input.hpp);
// optionally writing every layer's per-head attention maps.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/checks.hpp"
#include "cli/encoder_input.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct EncodeArguments {
  std::string model, input, output, maps;
  bool use_double = false;
};

namespace detail_encode {

template <class T>
void save_maps(const std::vector<Tensor<T>>& weights, const std::string& path) {
  io::SafeTensorsWriter maps;
  for (std::size_t l = 0; l < weights.size(); ++l)
    maps.add(detail::concat("layers.", l, ".weights"), weights[l]);
  maps.save(path);
}

template <class T>
void run_vit(const EncodeArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const auto vit = io::load_vit_model<T>(args.model);
  const Tensor<T> images = read_vit_images<T>(config, args.input);
  EncoderForwardOptions options;
  if (!args.maps.empty()) options.weights = AttentionWeights::per_head;
  const auto result = vit.forward(images, options);
  io::SafeTensorsWriter output;
  output.add(config.vit.num_classes > 0 ? "logits" : "features", result.logits);
  output.add("tokens", result.tokens);
  output.save(args.output);
  if (!args.maps.empty()) save_maps(result.weights, args.maps);
}

template <class T>
void run(const EncodeArguments& args) {
  if (io::model_type_of(args.model) == io::k_vit_model_type) return run_vit<T>(args);
  const auto encoder = io::load_encoder_model<T>(args.model);
  const auto [src, mask] = read_encoder_input(encoder, args.input);

  EncoderForwardOptions options;
  if (!args.maps.empty()) options.weights = AttentionWeights::per_head;
  const auto result = encoder.forward(src, mask, options);

  io::SafeTensorsWriter output;
  output.add("output", result.output);
  output.save(args.output);
  if (!args.maps.empty()) save_maps(result.weights, args.maps);
}

}  // namespace detail_encode

inline void add_encode_command(CLI::App& app) {
  auto args = std::make_shared<EncodeArguments>();
  CLI::App* cmd = app.add_subcommand(
      "encode",
      "Run a torch.nn.TransformerEncoder exported with examples/export_pytorch.py, or a ViT");
  cmd->add_option("--model", args->model,
                  "Model directory: config.json and model.safetensors (docs/model-format.md)")
      ->required();
  cmd->add_option("--input", args->input,
                  "Encoder: src [B,L,E]; optional src_key_padding_mask [B,L] (True = ignore), mask "
                  "[L,L] or [B*H,L,L] (bool True = not allowed, or float added). ViT: images as "
                  "for attnlens classify (PNG, IDX or safetensors `images` [B,C,H,W])")
      ->required();
  cmd->add_option("--output", args->output,
                  "Output file: output [B,L,E]; for a ViT logits [B,classes] (features [B,E] "
                  "without a head) and tokens [B,L,E]")
      ->required();
  cmd->add_option("--maps", args->maps,
                  "Also write each layer's attention maps: layers.{i}.weights [B,H,L,L]");
  cmd->add_flag("--double", args->use_double, "Compute and write in float64 (default float32)");
  cmd->callback([args] {
    run_reporting_errors("encode", [&] {
      if (args->use_double)
        detail_encode::run<double>(*args);
      else
        detail_encode::run<float>(*args);
    });
  });
}

}  // namespace attnlens::cli
