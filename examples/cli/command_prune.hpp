// attnlens prune: head-pruning curves of a ViT classifier on Fashion-MNIST
// (interpret/head_importance.hpp, docs/interpretability.md). Every head is scored on the first
// --examples training images with their gold labels, by attribution (Hao et al. 2021), by its
// largest attention weight, by Taylor importance and at random (5 draws); for p = 0, 0.1, ...,
// 1 the lowest-scored fraction p of all heads is zeroed and the accuracy measured on the test
// split, without fine-tuning. Writes the curves as CSV and as a PNG line plot.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/interpret/head_importance.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/line_plot.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/image_dataset.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct PruneArguments {
  std::string model, data = io::k_fashion_mnist_directory, output, plot, rule = "left";
  Index examples = 200, limit = 0, steps = 20, batch_size = 500;
  std::uint64_t seed = 0;
  int threads = 0;
};

namespace detail_prune {

inline constexpr int k_random_draws = 5;
inline constexpr Index k_importance_batch = 50;  // images per attribution pass

// One ranking's accuracies at the fractions, with their spread over draws (random only).
struct PruningCurve {
  std::string name;
  std::vector<double> accuracy, spread;
};

inline std::vector<double> pruning_fractions() {
  std::vector<double> fractions;
  for (int i = 0; i <= 10; ++i) fractions.push_back(i / 10.0);
  return fractions;
}

inline void print_importance(const std::string& name, const Matrix<double>& scores) {
  std::printf("%s importance (rows: layers, columns: heads)\n", name.c_str());
  for (Index l = 0; l < scores.rows(); ++l) {
    std::printf("  L%ld", static_cast<long>(l));
    for (Index h = 0; h < scores.cols(); ++h) std::printf(" %10.4g", scores(l, h));
    std::printf("\n");
  }
}

inline void write_csv(const std::string& path, const std::vector<double>& fractions,
                      Index heads, const std::vector<PruningCurve>& curves) {
  std::ofstream out(path);
  if (!out) throw IoError("cannot write '" + path + "'");
  out << "fraction,heads_pruned";
  for (const PruningCurve& c : curves) out << ',' << c.name << (c.spread.empty() ? "" : ",random_std");
  out << '\n';
  char buffer[64];
  for (std::size_t i = 0; i < fractions.size(); ++i) {
    std::snprintf(buffer, sizeof buffer, "%.1f,%ld", fractions[i],
                  static_cast<long>(pruned_head_count(heads, fractions[i])));
    out << buffer;
    for (const PruningCurve& c : curves) {
      std::snprintf(buffer, sizeof buffer, ",%.6f", c.accuracy[i]);
      out << buffer;
      if (!c.spread.empty()) {
        std::snprintf(buffer, sizeof buffer, ",%.6f", c.spread[i]);
        out << buffer;
      }
    }
    out << '\n';
  }
  if (!out) throw IoError("cannot write '" + path + "'");
}

inline void write_plot(const std::string& path, const std::vector<double>& fractions,
                       const std::vector<PruningCurve>& curves, const std::string& title) {
  static const io::PlotMarker markers[] = {io::PlotMarker::circle, io::PlotMarker::square,
                                           io::PlotMarker::triangle, io::PlotMarker::diamond};
  io::LinePlot panel;
  panel.title = title;
  panel.x_label = "fraction of heads pruned (lowest importance first)";
  panel.y_label = "test accuracy (%)";
  panel.y_min = 0;
  panel.y_max = 100;
  // Below the curves at the left: every ranking keeps 85% or more up to p = 0.3 on a trained
  // model, and the picture is wide enough for the legend to end before p = 0.4. The random
  // curve is the mean of its draws with bars of +- one standard deviation.
  panel.legend = io::LegendPosition::bottom_left;
  for (std::size_t c = 0; c < curves.size(); ++c) {
    io::PlotSeries series;
    series.name = curves[c].name == "random"
                      ? detail::concat("random (", k_random_draws, " draws)")
                      : curves[c].name;
    series.x = fractions;
    for (const double a : curves[c].accuracy) series.y.push_back(100 * a);
    for (const double s : curves[c].spread) series.y_error.push_back(100 * s);
    series.marker = markers[c % 4];
    panel.series.push_back(std::move(series));
  }
  io::LinePlotOptions options;
  options.width = 1400;
  options.height = 640;
  io::write_line_plot_png(path, {panel}, options);
}

inline void run(const PruneArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const VisionTransformerOptions& o = config.vit;
  require_fashion_mnist_classifier(config, args.model);
  AttributionOptions options;
  options.steps = args.steps;
  options.rule = value_named(k_riemann_rule_names, args.rule, "--rule");
  options.parallel.threads = args.threads;
  riemann_points(options);
  const VisionTransformer<float> vit = io::load_vit_model<float>(args.model);
  io::FashionMnistOptions data_options;
  data_options.directory = args.data;
  data_options.normalization = vit_normalization(config);
  const ImageDataset<float> train =
      first_examples(io::load_fashion_mnist<float>(io::FashionMnistSplit::train, data_options),
                     args.examples);
  const ImageDataset<float> test = first_examples(
      io::load_fashion_mnist<float>(io::FashionMnistSplit::test, data_options), args.limit);
  const Index layers = o.encoder.num_layers, heads = o.encoder.layer.nhead;
  std::printf("prune %s: %ld x %ld heads, importance on %ld training images (%s rule, m = %ld), "
              "accuracy on %ld test images\n",
              args.model.c_str(), static_cast<long>(layers), static_cast<long>(heads),
              static_cast<long>(train.size()), args.rule.c_str(), static_cast<long>(args.steps),
              static_cast<long>(test.size()));
  std::fflush(stdout);

  // The importance scores are sums over images: batch by batch.
  Matrix<double> attribution = Matrix<double>::Zero(layers, heads), attention = attribution,
                 taylor = attribution;
  for (Index begin = 0; begin < train.size(); begin += k_importance_batch) {
    std::vector<Index> examples;
    for (Index i = begin; i < std::min(train.size(), begin + k_importance_batch); ++i)
      examples.push_back(i);
    const Tensor<float> images = gather_first_axis(train.images, examples);
    const std::vector<Index> labels = gather_first_axis(train.labels, examples);
    attribution += attribution_head_importance(vit, images, labels, options);
    attention += attention_head_importance(vit, images, options.parallel);
    taylor += taylor_head_importance(vit, images, labels, options.parallel);
  }
  const std::vector<std::pair<std::string, Matrix<double>>> rankings = {
      {"attribution", attribution}, {"attention", attention}, {"taylor", taylor}};
  for (const auto& [name, scores] : rankings) print_importance(name, scores);

  // A set of pruned heads is measured once, whichever ranking chose it (p = 0 and p = 1 are
  // the same for all).
  std::map<std::vector<std::vector<double>>, double> measured;
  const auto accuracy = [&](const Matrix<double>& scores, double fraction) {
    const auto scales = pruned_head_scales(scores, fraction);
    const auto known = measured.find(scales);
    if (known != measured.end()) return known->second;
    const double a =
        head_scaled_accuracy(vit, test.images, test.labels, scales, args.batch_size,
                             options.parallel);
    measured.emplace(scales, a);
    return a;
  };
  const std::vector<double> fractions = pruning_fractions();
  std::vector<PruningCurve> curves;
  for (const auto& [name, scores] : rankings) {
    PruningCurve curve{name, {}, {}};
    for (const double p : fractions) curve.accuracy.push_back(accuracy(scores, p));
    curves.push_back(std::move(curve));
  }
  std::vector<Matrix<double>> draws;
  for (int d = 0; d < k_random_draws; ++d)
    draws.push_back(random_head_importance(layers, heads, args.seed + static_cast<std::uint64_t>(d)));
  PruningCurve random{"random", {}, {}};
  for (const double p : fractions) {
    double sum = 0, squares = 0;
    for (const Matrix<double>& scores : draws) {
      const double a = accuracy(scores, p);
      sum += a;
      squares += a * a;
    }
    const double mean = sum / k_random_draws;
    random.accuracy.push_back(mean);
    random.spread.push_back(std::sqrt(std::max(0.0, squares / k_random_draws - mean * mean)));
  }
  curves.push_back(std::move(random));

  std::printf("\n%-8s %6s", "fraction", "heads");
  for (const PruningCurve& c : curves) std::printf(" %12s", c.name.c_str());
  std::printf("\n");
  for (std::size_t i = 0; i < fractions.size(); ++i) {
    std::printf("%-8.1f %6ld", fractions[i],
                static_cast<long>(pruned_head_count(layers * heads, fractions[i])));
    for (const PruningCurve& c : curves) std::printf(" %11.2f%%", 100 * c.accuracy[i]);
    std::printf("\n");
  }
  std::printf("(%zu pruned sets measured; random: the mean of %d draws, seeds %lu..%lu)\n",
              measured.size(), k_random_draws, static_cast<unsigned long>(args.seed),
              static_cast<unsigned long>(args.seed + k_random_draws - 1));
  write_csv(args.output, fractions, layers * heads, curves);
  write_plot(args.plot, fractions, curves,
             detail::concat("Head pruning: ", layers, " x ", heads, " heads, ", test.size(),
                            " Fashion-MNIST test images"));
}

}  // namespace detail_prune

inline void add_prune_command(CLI::App& app) {
  auto args = std::make_shared<PruneArguments>();
  CLI::App* cmd = app.add_subcommand(
      "prune",
      "Head-pruning curves of a ViT on Fashion-MNIST: accuracy as the lowest-ranked heads are "
      "zeroed, ranked by attribution, attention weight, Taylor importance and at random");
  cmd->add_option("--model", args->model,
                  "ViT model directory of a Fashion-MNIST classifier (attnlens train's best/)")
      ->required();
  cmd->add_option("--data", args->data,
                  "Directory of the Fashion-MNIST files (default Debian's dataset-fashion-mnist)");
  cmd->add_option("--examples", args->examples,
                  "Training images (the first N, gold labels) the importance is summed over "
                  "(default 200, as the paper)")
      ->default_str("200")
      ->check(k_positive_number);
  cmd->add_option("--limit", args->limit,
                  "Only the first N test images per accuracy point (0: all 10,000)")
      ->check(k_non_negative_number);
  cmd->add_option("--steps", args->steps, "Attribution's Riemann steps m (default 20)")
      ->default_str("20")
      ->check(k_positive_number);
  cmd->add_option("--rule", args->rule, "Attribution's rule: left (default), right or midpoint")
      ->default_str("left")
      ->check(CLI::IsMember(names_of(k_riemann_rule_names)));
  cmd->add_option("--seed", args->seed,
                  "First seed of the 5 random rankings (seeds S..S+4; default 0)");
  cmd->add_option("--batch-size", args->batch_size, "Test images per forward pass (default 500)")
      ->default_str("500")
      ->check(k_positive_number);
  cmd->add_option("--output", args->output,
                  "The CSV to write: fraction, heads_pruned and one accuracy column per ranking "
                  "(random: the mean, and random_std)")
      ->required();
  cmd->add_option("--plot", args->plot, "The PNG of the curves to write")->required();
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->callback([args] { run_reporting_errors("prune", [&] { detail_prune::run(*args); }); });
}

}  // namespace attnlens::cli
