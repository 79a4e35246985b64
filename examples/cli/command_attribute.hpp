// attnlens attribute: attention attribution (interpret/attribution.hpp, docs/interpretability.md)
// of one image of a ViT classifier: per layer, H x L x L integrated gradients of the target
// class's probability over the layer's attention, written to a safetensors file, with each
// layer's completeness check (the sum of the attributions against F(A) - F(0)) printed.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct AttributeArguments {
  std::string model, input, output, rule = "left";
  Index layer = 0, target = 0, steps = 20, index = 0;
  bool all_layers = false, layer_given = false, target_given = false;
  int threads = 0;
};

namespace detail_attribute {

inline void run(const AttributeArguments& args) {
  if (args.layer_given == args.all_layers)
    throw ArgumentError("--layer L or --all-layers: expected one of them, got " +
                        std::string(args.all_layers ? "both" : "neither"));
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const Index layers = config.vit.encoder.num_layers;
  require_vit_classifier(config, args.model, "nothing to attribute", args.target_given,
                         args.target);
  if (args.layer_given)
    detail::require_argument(args.layer >= 0 && args.layer < layers, "--layer",
                             detail::concat("0..", layers - 1, " (the model has ", layers,
                                            " layers)"),
                             args.layer);
  AttributionOptions options;
  options.steps = args.steps;
  options.rule = value_named(k_riemann_rule_names, args.rule, "--rule");
  options.parallel.threads = args.threads;
  riemann_points(options);

  const Tensor<float> image =
      selected_image(read_vit_images<float>(config, args.input), args.index);
  const VisionTransformer<float> vit = io::load_vit_model<float>(args.model);
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  const Index target = args.target_given ? args.target : predicted_classes(vit, image, forward)[0];

  io::SafeTensorsWriter writer;
  const Index first = args.all_layers ? 0 : args.layer, last = args.all_layers ? layers : first + 1;
  for (Index l = first; l < last; ++l) {
    const LayerAttribution<float> a = attention_attribution(vit, image, {target}, l, options);
    if (l == first) {
      std::printf("image %ld: class %s%s, F = p(class) = %.6f; %s rule, m = %ld\n",
                  static_cast<long>(args.index), vit_class_label(config, target).c_str(),
                  args.target_given ? "" : " (predicted)", a.probability[0], args.rule.c_str(),
                  static_cast<long>(args.steps));
      writer.add("probability", Tensor<double>({1}, std::vector<double>{a.probability[0]}));
    }
    const double gap = completeness_gaps(a)[0];
    const double difference = a.probability[0] - a.baseline_probability[0];
    std::printf("layer %ld: F(0) = %.6f, F(A) - F(0) = %+.6f, sum of attributions %+.6f (gap %+.2e)\n",
                static_cast<long>(l), a.baseline_probability[0], difference, difference + gap,
                gap);
    const Shape& shape = a.attribution.shape();
    writer.add(detail::concat("layers.", l, ".attribution"),
               a.attribution.reshaped({shape[1], shape[2], shape[3]}));
    writer.add(detail::concat("layers.", l, ".baseline_probability"),
               Tensor<double>({1}, std::vector<double>{a.baseline_probability[0]}));
  }
  writer.add("target", Tensor<std::int64_t>({1}, std::vector<std::int64_t>{target}));
  writer.set_metadata("rule", args.rule);
  writer.set_metadata("steps", std::to_string(args.steps));
  writer.set_metadata("index", std::to_string(args.index));
  writer.save(args.output);
}

}  // namespace detail_attribute

inline void add_attribute_command(CLI::App& app) {
  auto args = std::make_shared<AttributeArguments>();
  CLI::App* cmd = app.add_subcommand(
      "attribute",
      "Attention attribution (integrated gradients over a layer's attention, Hao et al. 2021) "
      "of one image of a ViT classifier, per layer H x L x L, as safetensors");
  add_vit_image_options(*cmd, args->model, args->input);
  cmd->add_option("--output", args->output,
                  "The safetensors file to write: layers.{l}.attribution (H x L x L, CLS first), "
                  "layers.{l}.baseline_probability (F with layer l's attention at 0), "
                  "probability (F), target (the class)")
      ->required();
  auto* layer = cmd->add_option("--layer", args->layer, "The layer to attribute, from 0");
  auto* all = cmd->add_flag("--all-layers", args->all_layers, "Attribute every layer, one by one");
  layer->excludes(all);
  auto* target = cmd->add_option("--class", args->target,
                                 "The target class whose probability F is (default: the "
                                 "predicted one)");
  cmd->add_option("--steps", args->steps, "Riemann steps m (default 20)")
      ->default_str("20")
      ->check(k_positive_number);
  cmd->add_option("--rule", args->rule,
                  "Where each step takes the gradient: left (alpha = k/m, k = 0..m-1, the "
                  "reference code's; default), right ((k+1)/m) or midpoint ((k+1/2)/m)")
      ->default_str("left")
      ->check(CLI::IsMember(names_of(k_riemann_rule_names)));
  cmd->add_option("--index", args->index, "Which image of --input, from 0 (default 0)")
      ->default_str("0");
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->callback([args, layer, target] {
    args->layer_given = layer->count() > 0;
    args->target_given = target->count() > 0;
    run_reporting_errors("attribute", [&] { detail_attribute::run(*args); });
  });
}

}  // namespace attnlens::cli
