// attnlens classify: a vision transformer's model directory (docs/model-format.md, "Vision
// transformers": written by attnlens train or examples/export_pytorch.py) run on images from a
// PNG, an IDX file or a safetensors file; prints each image's top classes with their softmax
// probabilities, and the accuracy when labels are given.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct ClassifyArguments {
  std::string model, input, output, labels;
  Index top = 1;
  int threads = 0;
  bool json = false, use_double = false;
};

namespace detail_classify {

// The labels of --labels: an IDX label file, or the input safetensors file's `labels`.
inline std::vector<Index> read_labels(const ClassifyArguments& args, Index classes, Index count) {
  std::vector<Index> labels;
  if (!args.labels.empty()) {
    labels = io::read_idx_labels(args.labels, classes);
  } else if (detail_images::ends_with(args.input, ".safetensors")) {
    const auto file = io::SafeTensors::load(args.input);
    if (!file.contains("labels")) return {};
    const Tensor<std::int64_t> stored = file.get<std::int64_t>("labels");
    for (const std::int64_t label : stored.storage()) {
      if (label < 0 || label >= classes)
        throw IoError(detail::concat(args.input, ": tensor 'labels': label ", label,
                                     " is outside [0, ", classes, ")"));
      labels.push_back(static_cast<Index>(label));
    }
  } else {
    return {};
  }
  if (static_cast<Index>(labels.size()) != count)
    throw ArgumentError(
        detail::concat("--labels: ", labels.size(), " labels for ", count, " images"));
  return labels;
}

template <class T>
void run(const ClassifyArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  if (config.vit.num_classes == 0)
    throw ArgumentError(detail::concat("--model: '", args.model,
                                       "' has no head (num_classes 0): it computes features, not "
                                       "classes (use attnlens encode)"));
  const VisionTransformer<T> vit = io::load_vit_model<T>(args.model);
  const Tensor<T> images = read_vit_images<T>(config, args.input);
  const Index count = images.dim(0), classes = config.vit.num_classes;
  const std::vector<Index> labels = read_labels(args, classes, count);
  const Index top = std::clamp<Index>(args.top, 1, classes);

  EncoderForwardOptions options;
  options.parallel.threads = args.threads;
  const Tensor<T> logits = vit.forward(images, options).logits;
  Tensor<T> probabilities = logits;
  softmax_rows<T>(probabilities.matrix());

  const auto name = [&](Index c) {
    return config.class_names.empty() ? std::to_string(c)
                                      : detail::concat(c, " ", config.class_names[c]);
  };
  nlohmann::ordered_json json = nlohmann::ordered_json::array();
  Index correct = 0;
  for (Index b = 0; b < count; ++b) {
    const auto p = probabilities.matrix().row(b);
    std::vector<Index> order(static_cast<std::size_t>(classes));
    std::iota(order.begin(), order.end(), Index(0));
    std::stable_sort(order.begin(), order.end(), [&](Index i, Index j) { return p(i) > p(j); });
    if (!labels.empty() && order[0] == labels[static_cast<std::size_t>(b)]) ++correct;
    if (args.json) {
      nlohmann::ordered_json item{{"image", b}, {"class", order[0]}};
      if (!config.class_names.empty()) item["name"] = config.class_names[order[0]];
      item["probabilities"] = std::vector<double>(p.data(), p.data() + classes);
      if (!labels.empty()) item["label"] = labels[static_cast<std::size_t>(b)];
      json.push_back(item);
      continue;
    }
    std::printf("%ld:", static_cast<long>(b));
    for (Index k = 0; k < top; ++k)
      std::printf("%s %s (%.4f)", k ? "," : "", name(order[k]).c_str(),
                  static_cast<double>(p(order[k])));
    if (!labels.empty())
      std::printf("  label %s", name(labels[static_cast<std::size_t>(b)]).c_str());
    std::printf("\n");
  }
  const double accuracy = labels.empty() ? 0.0 : static_cast<double>(correct) / count;
  if (args.json) {
    nlohmann::ordered_json out{{"images", json}};
    if (!labels.empty()) out["accuracy"] = accuracy;
    std::printf("%s\n", out.dump(2).c_str());
  } else if (!labels.empty()) {
    std::printf("accuracy %.4f (%ld of %ld)\n", accuracy, static_cast<long>(correct),
                static_cast<long>(count));
  }
  if (!args.output.empty()) {
    io::SafeTensorsWriter output;
    output.add("logits", logits);
    output.add("probabilities", probabilities);
    output.save(args.output);
  }
}

}  // namespace detail_classify

inline void add_classify_command(CLI::App& app) {
  auto args = std::make_shared<ClassifyArguments>();
  CLI::App* cmd =
      app.add_subcommand("classify", "Classify images with a vision transformer's model directory");
  cmd->add_option("--model", args->model,
                  "ViT model directory: config.json and model.safetensors (docs/model-format.md)")
      ->required();
  cmd->add_option("--input", args->input,
                  "Images: a PNG (one gray image), an IDX file (N x H x W bytes, gzip or plain; "
                  "Fashion-MNIST's format), both scaled to [0, 1] and normalized with the "
                  "config's mean and std; or a .safetensors file with `images` [B, C, H, W] "
                  "taken as the model's input (and optional int64 `labels` [B])")
      ->required();
  cmd->add_option("--labels", args->labels,
                  "An IDX label file for the images: also print the accuracy");
  cmd->add_option("--top", args->top, "Print the K most probable classes per image")
      ->default_val(1)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output", args->output,
                  "Also write logits [B, classes] and probabilities [B, classes]");
  cmd->add_flag("--json", args->json, "Print JSON: per image its class and probabilities");
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--double", args->use_double, "Compute in float64 (default float32)");
  cmd->callback([args] {
    run_reporting_errors("classify", [&] {
      if (args->use_double)
        detail_classify::run<double>(*args);
      else
        detail_classify::run<float>(*args);
    });
  });
}

}  // namespace attnlens::cli
