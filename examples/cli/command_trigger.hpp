// attnlens trigger: triggers from attribution trees (interpret/attribution_trigger.hpp,
// docs/interpretability.md) on Fashion-MNIST's test split. For class c: the first
// --source-images test images of class c that the model classifies correctly are the sources;
// their trees' strongest edges choose --patches patches; the sources' mean pixels there are
// pasted into the test images (the first --limit) of the other classes. Per class: clean
// accuracy, accuracy with the trigger and with the same content at --draws random places, and
// the share of the images predicted as c in each case, as CSV.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution_trigger.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/heatmap_grid.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/image_dataset.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct TriggerArguments {
  std::string model, data = io::k_fashion_mnist_directory, output, png;
  Index target = 0, limit = 0, batch_size = 500;
  bool all_classes = false, target_given = false;
  TriggerOptions options;
};

namespace detail_trigger {

// Mean and (population) standard deviation.
struct Spread {
  double mean = 0, std = 0;
};

inline Spread spread_of(const std::vector<double>& values) {
  double sum = 0, squares = 0;
  for (const double v : values) {
    sum += v;
    squares += v * v;
  }
  const double n = static_cast<double>(values.size());
  const double mean = sum / n;
  return {mean, std::sqrt(std::max(0.0, squares / n - mean * mean))};
}

// One class's row.
struct TriggerRow {
  Index target = 0, sources = 0, images = 0;
  std::vector<Index> patches;
  Vector<double> scores;  // per patch (trigger_patch_scores); empty without sources
  TriggerOutcome clean, trigger;
  Spread random_accuracy, random_share;
};

inline const char* k_csv_header =
    "class,name,sources,images,patches,clean_accuracy,trigger_accuracy,random_accuracy,"
    "random_accuracy_std,clean_share,trigger_share,random_share,random_share_std";

inline std::string csv_line(const TriggerRow& r, const io::VitModelConfig& config) {
  std::string patches;
  for (const Index p : r.patches) patches += (patches.empty() ? "" : " ") + std::to_string(p);
  const std::string name = r.target < static_cast<Index>(config.class_names.size())
                               ? config.class_names[static_cast<std::size_t>(r.target)]
                               : std::to_string(r.target);
  char numbers[256];
  std::snprintf(numbers, sizeof numbers, "%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f",
                r.clean.accuracy, r.trigger.accuracy, r.random_accuracy.mean, r.random_accuracy.std,
                r.clean.target_share, r.trigger.target_share, r.random_share.mean,
                r.random_share.std);
  // A name with a comma or quote is quoted (Fashion-MNIST's have a slash at most).
  std::string quoted = name;
  if (name.find_first_of(",\"") != std::string::npos) {
    quoted = "\"";
    for (const char c : name) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    quoted += "\"";
  }
  return detail::concat(r.target, ",", quoted, ",", r.sources, ",", r.images, ",", patches, ",",
                        r.sources > 0 ? numbers : "nan,nan,nan,nan,nan,nan,nan,nan");
}

// The indices of the first `count` images of class `target` the model classifies correctly,
// scanned in order in batches.
inline std::vector<Index> correct_sources(const VisionTransformer<float>& vit,
                                          const ImageDataset<float>& test, Index target,
                                          Index count, Index batch_size,
                                          const ParallelOptions& parallel) {
  std::vector<Index> of_class, found;
  for (Index i = 0; i < test.size(); ++i)
    if (test.labels[static_cast<std::size_t>(i)] == target) of_class.push_back(i);
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  for (std::size_t begin = 0; begin < of_class.size() && static_cast<Index>(found.size()) < count;
       begin += static_cast<std::size_t>(batch_size)) {
    const std::vector<Index> batch(
        of_class.begin() + static_cast<std::ptrdiff_t>(begin),
        of_class.begin() + static_cast<std::ptrdiff_t>(std::min(
                               of_class.size(), begin + static_cast<std::size_t>(batch_size))));
    const std::vector<Index> predicted =
        predicted_classes(vit, gather_first_axis(test.images, batch), forward);
    for (std::size_t k = 0; k < batch.size() && static_cast<Index>(found.size()) < count; ++k)
      if (predicted[k] == target) found.push_back(batch[k]);
  }
  return found;
}

inline TriggerRow trigger_row(const VisionTransformer<float>& vit, const ImageDataset<float>& test,
                              const ImageDataset<float>& victims_of_all, Index target,
                              const TriggerArguments& args) {
  const TriggerOptions& o = args.options;
  TriggerRow row;
  row.target = target;
  std::vector<Index> others;
  for (Index i = 0; i < victims_of_all.size(); ++i)
    if (victims_of_all.labels[static_cast<std::size_t>(i)] != target) others.push_back(i);
  row.images = static_cast<Index>(others.size());
  const std::vector<Index> sources =
      correct_sources(vit, test, target, o.source_images, args.batch_size, o.parallel);
  row.sources = static_cast<Index>(sources.size());
  if (sources.empty() || others.empty()) return row;
  const AttributionTrigger<float> trigger =
      attribution_trigger(vit, gather_first_axis(test.images, sources), target, o);
  row.patches = trigger.patches;
  row.scores = trigger.scores;
  const Tensor<float> images = gather_first_axis(victims_of_all.images, others);
  const std::vector<Index> labels = gather_first_axis(victims_of_all.labels, others);
  const Index patch_size = vit.options().patch_size;
  const auto outcome = [&](const std::vector<Index>& patches) {
    return trigger_outcome(vit, paste_patches(images, trigger.content, patches, patch_size), labels,
                           target, args.batch_size, o.parallel);
  };
  row.clean = trigger_outcome(vit, images, labels, target, args.batch_size, o.parallel);
  row.trigger = outcome(trigger.patches);
  std::vector<double> accuracy, share;
  for (Index d = 0; d < o.draws; ++d) {
    const TriggerOutcome r = outcome(random_trigger_patches(
        trigger.scores.size(), o.patches, o.seed + static_cast<std::uint64_t>(d)));
    accuracy.push_back(r.accuracy);
    share.push_back(r.target_share);
  }
  row.random_accuracy = spread_of(accuracy);
  row.random_share = spread_of(share);
  return row;
}

// The rows' patch scores on the patch grid, five classes a row of panels, each titled with its
// class, its trigger's patches under it and the best one outlined.
inline void write_png(const std::string& path, const std::vector<TriggerRow>& rows,
                      const io::VitModelConfig& config, const TriggerArguments& args) {
  const Index grid_rows = config.vit.image_height / config.vit.patch_size,
              grid_cols = config.vit.image_width / config.vit.patch_size;
  std::vector<std::vector<io::HeatmapPanel>> panels;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (r % 5 == 0) panels.emplace_back();
    const TriggerRow& row = rows[r];
    io::HeatmapPanel panel;
    panel.title = vit_class_label(config, row.target);
    panel.values = Matrix<double>::Zero(grid_rows, grid_cols);
    std::string patches;
    for (Index p = 0; p < row.scores.size(); ++p)
      panel.values(p / grid_cols, p % grid_cols) = row.scores(p);
    for (const Index p : row.patches)
      patches +=
          detail::concat(patches.empty() ? "" : " ", "(", p / grid_cols, ",", p % grid_cols, ")");
    panel.note = row.patches.empty() ? std::string("no correct source") : patches;
    if (!row.patches.empty()) {
      const double top = static_cast<double>(row.patches[0] / grid_cols),
                   left = static_cast<double>(row.patches[0] % grid_cols);
      panel.box = io::HeatmapBox{left, top, left + 1, top + 1};
    }
    panels.back().push_back(std::move(panel));
  }
  io::HeatmapGridOptions options;
  options.title = detail::concat("patch scores of the trees' ", args.options.edges_per_tree,
                                 " strongest edges, ", args.options.source_images,
                                 " sources per class (trigger patches ROW,COL; best outlined)");
  options.colour_bar_label = "score / the class's largest";
  options.sampling = io::HeatmapSampling::nearest;
  options.axes = true;
  io::write_heatmap_grid_png(path, panels, options);
}

inline void run(const TriggerArguments& args) {
  if (args.target_given == args.all_classes)
    throw ArgumentError("--class C or --all-classes: expected one of them, got " +
                        std::string(args.all_classes ? "both" : "neither"));
  const io::VitModelConfig config = io::load_vit_config(args.model);
  require_fashion_mnist_classifier(config, args.model);
  const Index classes = config.vit.num_classes;
  if (!args.all_classes)
    detail::require_argument(args.target >= 0 && args.target < classes, "--class",
                             detail::concat("a class in 0..", classes - 1), args.target);
  const Index patch_count = (config.vit.image_height / config.vit.patch_size) *
                            (config.vit.image_width / config.vit.patch_size);
  detail::require_argument(args.options.patches <= patch_count, "--patches",
                           detail::concat("1..", patch_count, " (the model's patches)"),
                           args.options.patches);
  const VisionTransformer<float> vit = io::load_vit_model<float>(args.model);
  io::FashionMnistOptions data_options;
  data_options.directory = args.data;
  data_options.normalization = vit_normalization(config);
  const ImageDataset<float> test =
      io::load_fashion_mnist<float>(io::FashionMnistSplit::test, data_options);
  const ImageDataset<float> victims = first_examples(test, args.limit);
  const TriggerOptions& o = args.options;
  std::printf(
      "trigger %s: %ld source images per class (correctly classified test images), %ld "
      "edges per tree (m = %ld, tau = %g), %ld patches; pasted into the other classes' "
      "images of the first %ld test images; random: %ld draws from seed %lu\n",
      args.model.c_str(), static_cast<long>(o.source_images), static_cast<long>(o.edges_per_tree),
      static_cast<long>(o.steps), o.tau, static_cast<long>(o.patches),
      static_cast<long>(victims.size()), static_cast<long>(o.draws),
      static_cast<unsigned long>(o.seed));
  std::printf("%-16s %7s %6s %-14s %8s %8s %16s %7s %7s %7s\n", "class", "sources", "images",
              "patches", "clean", "trigger", "random", "->c", "->c trg", "->c rnd");
  std::fflush(stdout);
  std::vector<TriggerRow> rows;
  for (Index c = args.all_classes ? 0 : args.target;
       c < (args.all_classes ? classes : args.target + 1); ++c) {
    const TriggerRow r = trigger_row(vit, test, victims, c, args);
    std::string patches;
    for (const Index p : r.patches) patches += (patches.empty() ? "" : " ") + std::to_string(p);
    std::printf("%-16s %7ld %6ld %-14s %7.2f%% %7.2f%% %7.2f+-%5.2f%% %6.2f%% %6.2f%% %6.2f%%\n",
                vit_class_label(config, c).c_str(), static_cast<long>(r.sources),
                static_cast<long>(r.images), patches.c_str(), 100 * r.clean.accuracy,
                100 * r.trigger.accuracy, 100 * r.random_accuracy.mean, 100 * r.random_accuracy.std,
                100 * r.clean.target_share, 100 * r.trigger.target_share,
                100 * r.random_share.mean);
    std::fflush(stdout);
    rows.push_back(r);
  }
  std::ofstream out(args.output);
  if (!out) throw IoError("cannot write '" + args.output + "'");
  out << k_csv_header << '\n';
  for (const TriggerRow& r : rows) out << csv_line(r, config) << '\n';
  if (!out) throw IoError("cannot write '" + args.output + "'");
  if (!args.png.empty()) write_png(args.png, rows, config, args);
}

}  // namespace detail_trigger

inline void add_trigger_command(CLI::App& app) {
  auto args = std::make_shared<TriggerArguments>();
  CLI::App* cmd = app.add_subcommand(
      "trigger",
      "Triggers from attribution trees (Hao et al. 2021's adversarial triggers, for images) on "
      "Fashion-MNIST: the patches of the strongest tree edges of one class's images, pasted into "
      "the other classes' test images, against the same content at random places");
  cmd->add_option("--model", args->model,
                  "ViT model directory of a Fashion-MNIST classifier (attnlens train's best/)")
      ->required();
  cmd->add_option("--data", args->data,
                  "Directory of the Fashion-MNIST files (default Debian's dataset-fashion-mnist)");
  auto* target = cmd->add_option("--class", args->target, "The class whose trigger is built");
  cmd->add_flag("--all-classes", args->all_classes, "Every class, one row each");
  cmd->add_option("--source-images", args->options.source_images,
                  "Correctly classified test images of the class whose trees are used, the first "
                  "N (default 20)")
      ->default_str("20")
      ->check(k_positive_number);
  cmd->add_option("--patches", args->options.patches, "Patches in the trigger (default 4)")
      ->default_str("4")
      ->check(k_positive_number);
  cmd->add_option("--edges", args->options.edges_per_tree,
                  "Strongest edges per tree that score their patches (default 3)")
      ->default_str("3")
      ->check(k_positive_number);
  cmd->add_option("--steps", args->options.steps,
                  "Riemann steps m of the attributions, left rule (default 20)")
      ->default_str("20")
      ->check(k_positive_number);
  cmd->add_option("--tau", args->options.tau, "The trees' threshold, in (0, 1] (default 0.4)")
      ->default_str("0.4");
  cmd->add_option("--draws", args->options.draws,
                  "Random placements of the same content to compare with (default 5)")
      ->default_str("5")
      ->check(k_positive_number);
  cmd->add_option("--seed", args->options.seed,
                  "Seed of the first random placement (draws use S..S+D-1; default 0)");
  cmd->add_option("--limit", args->limit,
                  "Paste into the first N test images only (0: all 10,000); the sources come from "
                  "the whole test split")
      ->check(k_non_negative_number);
  cmd->add_option("--batch-size", args->batch_size, "Images per forward pass (default 500)")
      ->default_str("500")
      ->check(k_positive_number);
  cmd->add_option("--output", args->output,
                  "The CSV to write, one row per class: sources, images, patches, clean, trigger "
                  "and random accuracy (mean, std) and the shares predicted as the class")
      ->required();
  cmd->add_option("--png", args->png,
                  "Also draw each class's patch scores on the patch grid, its trigger's patches "
                  "named and the best outlined");
  cmd->add_option("--threads", args->options.parallel.threads,
                  "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->callback([args, target] {
    args->target_given = target->count() > 0;
    run_reporting_errors("trigger", [&] {
      detail::require_argument(
          std::isfinite(args->options.tau) && args->options.tau > 0 && args->options.tau <= 1,
          "--tau", "a value in (0, 1]", args->options.tau);
      check_trigger_options(args->options);
      detail_trigger::run(*args);
    });
  });
}

}  // namespace attnlens::cli
