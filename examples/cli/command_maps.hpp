// attnlens maps: attention maps as a picture (docs/interpretability.md). For a vision
// transformer's model directory and one image (PNG, IDX or safetensors, cli/image_input.hpp), a
// grid of layers x heads, each the query token's attention over the patch grid, upsampled and
// laid over the image, with an optional column of attention rollout; for an encoder's directory
// and one sequence (src of a safetensors file, cli/encoder_input.hpp), each head's token x token
// map.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/interpret/attention_maps.hpp"
#include "attnlens/interpret/attention_rollout.hpp"
#include "attnlens/io/heatmap_grid.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/checks.hpp"
#include "cli/encoder_input.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct MapsArguments {
  std::string model, input, output, query = "cls", head_fusion = "mean", scale = "panel";
  std::vector<Index> layers;
  Index index = 0, panel_size = 160;
  double alpha = 0.6;
  bool rollout = false, query_given = false;
  int threads = 0;
};

namespace detail_maps {

// The layers to draw: --layers, checked against the model's, or all of them.
inline std::vector<Index> chosen_layers(const MapsArguments& args, Index num_layers) {
  if (args.layers.empty()) {
    std::vector<Index> all(static_cast<std::size_t>(num_layers));
    for (Index l = 0; l < num_layers; ++l) all[static_cast<std::size_t>(l)] = l;
    return all;
  }
  for (const Index l : args.layers)
    detail::require_argument(l >= 0 && l < num_layers, "--layers",
                             detail::concat("layer indices in 0..", num_layers - 1, " (the model has ",
                                            num_layers, " layers)"),
                             l);
  return args.layers;
}

inline void require_index(const MapsArguments& args, Index count, const char* what) {
  detail::require_argument(args.index >= 0 && args.index < count, "--index",
                           detail::concat("0..", count - 1, " (the input holds ", count, " ", what,
                                          ")"),
                           args.index);
}

// The heads of each chosen layer (and the rollout through it) as panels; `panel(map)` makes a
// panel's values and box from an L x L map of the chosen item.
template <class T, class Panel>
std::vector<std::vector<io::HeatmapPanel>> layer_panels(const std::vector<Tensor<T>>& weights,
                                                        const MapsArguments& args, Index batch,
                                                        Panel&& panel) {
  const std::vector<Index> layers =
      chosen_layers(args, static_cast<Index>(weights.size()));
  std::vector<Tensor<T>> rollout;
  if (args.rollout)
    rollout = attention_rollout_by_layer(
        weights, {value_named(k_head_fusion_names, args.head_fusion, "--head-fusion")});
  const bool per_panel = args.scale == "panel";
  const auto titled = [&](io::HeatmapPanel p, const std::string& title) {
    p.title = title;
    if (per_panel) p.note = detail::concat("max ", std::round(p.values.maxCoeff() * 100) / 100);
    return p;
  };
  std::vector<std::vector<io::HeatmapPanel>> rows;
  for (const Index l : layers) {
    const auto at = static_cast<std::size_t>(l);
    std::vector<io::HeatmapPanel> row;
    for (Index h = 0; h < weights[at].dim(1); ++h)
      row.push_back(titled(panel(weights[at].matrix({batch, h})), detail::concat("L", l, " H", h)));
    if (args.rollout)
      row.push_back(titled(panel(rollout[at].matrix({batch})),
                           l == 0 ? std::string("rollout L0") : detail::concat("rollout L0-", l)));
    rows.push_back(std::move(row));
  }
  return rows;
}

inline io::HeatmapGridOptions grid_options(const MapsArguments& args) {
  io::HeatmapGridOptions options;
  options.scale = args.scale == "panel" ? io::HeatmapScale::panel : io::HeatmapScale::shared;
  options.colour_bar_label = args.scale == "panel" ? "attention / the panel's max" : "attention";
  options.alpha = args.alpha;
  options.panel_pixels = args.panel_size;
  return options;
}

inline std::string query_name(const AttentionQuery& query, Index token) {
  switch (query.kind) {
    case AttentionQuery::Kind::cls:
      return "the CLS token";
    case AttentionQuery::Kind::token:
      return detail::concat("token ", token);
    case AttentionQuery::Kind::patch:
      return detail::concat("patch (", query.row, ", ", query.col, ")");
  }
  return "";
}

inline void run_vit(const MapsArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const auto vit = io::load_vit_model<float>(args.model);
  const Grid2d grid = vit_patch_grid(config.vit);
  const AttentionQuery query = parse_attention_query(args.query, "--query");
  const Index token = query_token(query, grid, "--query");
  chosen_layers(args, vit.options().encoder.num_layers);
  const Tensor<float> images = read_vit_images<float>(config, args.input);
  require_index(args, images.dim(0), "images");
  Tensor<float> image({1, images.dim(1), images.dim(2), images.dim(3)});
  std::copy_n(images.data() + args.index * image.size(), image.size(), image.data());

  EncoderForwardOptions forward;
  forward.weights = AttentionWeights::per_head;
  forward.parallel.threads = args.threads;
  const auto result = vit.forward(image, forward);

  // The query's patch outlined on every map (a patch's cell; CLS has none).
  std::optional<io::HeatmapBox> box;
  if (grid.has_position(token)) {
    const auto [row, col] = grid.position(token);
    box = io::HeatmapBox{static_cast<double>(col), static_cast<double>(row),
                         static_cast<double>(col + 1), static_cast<double>(row + 1)};
  }
  const auto rows = layer_panels(result.weights, args, 0, [&](const auto& map) {
    return io::HeatmapPanel{"", "", grid_attention_row(map, token, grid).template cast<double>(),
                            box};
  });
  io::HeatmapGridOptions options = grid_options(args);
  options.background = display_image(images, args.index);
  options.title = detail::concat("attention of ", query_name(query, token), ", image ", args.index);
  if (config.vit.num_classes > 0) {
    Tensor<float> p = result.logits;
    softmax_rows<float>(p.matrix());
    Index best = 0;
    p.matrix().row(0).maxCoeff(&best);
    options.title += detail::concat(
        ", predicted ",
        config.class_names.empty() ? std::to_string(best)
                                  : config.class_names[static_cast<std::size_t>(best)], " (",
        std::round(p.matrix()(0, best) * 100), "%)");
  }
  io::write_heatmap_grid_png(args.output, rows, options);
}

inline void run_encoder(const MapsArguments& args) {
  if (args.query_given)
    throw ArgumentError(detail::concat(
        "--query: applies to ViT models (an encoder's maps are whole token x token matrices), got '",
        args.query, "'"));
  const auto encoder = io::load_encoder_model<float>(args.model);
  chosen_layers(args, encoder.num_layers());
  const auto [src, mask] = read_encoder_input(encoder, args.input);
  require_index(args, src.dim(0), "sequences");
  EncoderForwardOptions forward;
  forward.weights = AttentionWeights::per_head;
  forward.parallel.threads = args.threads;
  const auto result = encoder.forward(src, mask, forward);
  const auto rows = layer_panels(result.weights, args, args.index, [](const auto& map) {
    return io::HeatmapPanel{"", "", map.template cast<double>(), std::nullopt};
  });
  io::HeatmapGridOptions options = grid_options(args);
  options.sampling = io::HeatmapSampling::nearest;
  options.axes = true;
  options.title = detail::concat("attention of sequence ", args.index,
                                 " (rows: queries, columns: keys)");
  io::write_heatmap_grid_png(args.output, rows, options);
}

}  // namespace detail_maps

inline void add_maps_command(CLI::App& app) {
  auto args = std::make_shared<MapsArguments>();
  CLI::App* cmd = app.add_subcommand(
      "maps", "Draw attention maps (per layer and head) and attention rollout as a PNG");
  cmd->add_option("--model", args->model,
                  "Model directory: config.json and model.safetensors of a ViT (attnlens train) "
                  "or of an encoder (examples/export_pytorch.py)")
      ->required();
  cmd->add_option("--input", args->input,
                  "ViT: images as for attnlens classify (a PNG, an IDX file or a .safetensors "
                  "file with `images` [B,C,H,W]). Encoder: a .safetensors file with src [B,L,E] "
                  "and optional masks as for attnlens encode")
      ->required();
  cmd->add_option("--output", args->output, "The PNG file to write")->required();
  auto* query = cmd->add_option(
      "--query", args->query,
      "ViT only: whose attention to draw: cls (the CLS token), a token index (CLS is 0) or a "
      "patch ROW,COL on the patch grid (outlined in red)");
  query->default_str("cls");
  cmd->add_option("--layers", args->layers,
                  "The layers to draw, one row each, e.g. 0,2,3 (default: all)")
      ->delimiter(',');
  cmd->add_flag("--rollout", args->rollout,
                "Add a column of attention rollout (Abnar & Zuidema 2020) through each row's layer");
  cmd->add_option("--head-fusion", args->head_fusion,
                  "How rollout fuses a layer's heads: mean (the paper's), max or min")
      ->default_str("mean")
      ->check(CLI::IsMember(names_of(k_head_fusion_names)));
  cmd->add_option("--index", args->index,
                  "Which image (ViT) or sequence (encoder) of --input to draw, from 0")
      ->default_str("0");
  cmd->add_option("--scale", args->scale,
                  "Colours: panel (each map from 0 to its own max, printed in its title) or "
                  "shared (every map from 0 to the largest value of all)")
      ->default_str("panel")
      ->check(CLI::IsMember({"panel", "shared"}));
  cmd->add_option("--alpha", args->alpha, "ViT: the maps' opacity over the image, in [0, 1]")
      ->default_str("0.6")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--panel-size", args->panel_size,
                  "About the side of a panel in pixels (the image or map enlarged by a whole "
                  "factor)")
      ->default_str("160")
      ->check(CLI::Range(Index{16}, Index{4096}));
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args, query] {
    args->query_given = query->count() > 0;
    run_reporting_errors("maps", [&] {
      if (io::model_type_of(args->model) == io::k_vit_model_type)
        detail_maps::run_vit(*args);
      else
        detail_maps::run_encoder(*args);
    });
  });
}

}  // namespace attnlens::cli
