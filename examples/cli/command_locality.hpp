// attnlens locality: how local a ViT's attention is, per layer and head
// (interpret/attention_distance.hpp, docs/interpretability.md "Heads that learn convolutions"):
// over the patch queries of a set of images, the mean Euclidean distance of the attention mass
// from its query and the fractions within Chebyshev radius 1 and 2, as a CSV (and JSON) table;
// optionally one query's attention (by default the centre patch's) averaged over the images, as
// a picture of layers x heads.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/interpret/attention_distance.hpp"
#include "attnlens/interpret/attention_maps.hpp"
#include "attnlens/io/heatmap_grid.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/position/quadratic.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct LocalityArguments {
  std::string model, input, output, json, maps, query;
  Index limit = 1000, batch_size = 100, panel_size = 96;
  int threads = 0;
};

namespace detail_locality {

// A quadratic encoding's learned centre Delta_h and width alpha_h per layer and head, or none.
struct QuadraticHeads {
  std::vector<Matrix<float>> center_shift;  // [l]: H x 2
  std::vector<Vector<float>> alpha;         // [l]: H
};

inline std::optional<QuadraticHeads> quadratic_heads(const VisionTransformer<float>& vit) {
  if (vit.options().relative_position.type != PositionType::quadratic) return std::nullopt;
  QuadraticHeads out;
  for (const auto& block : vit.blocks) {
    const auto& term = block.position.as<QuadraticEncoding<float>>();
    out.center_shift.push_back(term.center_shift);
    out.alpha.push_back(term.alpha);
  }
  return out;
}

inline void write_csv(const std::string& path, const AttentionDistances& stats, Index patch_size,
                      const std::optional<QuadraticHeads>& quadratic) {
  std::ofstream out(path);
  if (!out) throw IoError("cannot write '" + path + "'");
  out << "layer,head,mean_distance_patches,mean_distance_pixels,within_1,within_2,patch_mass";
  if (quadratic) out << ",center_row,center_col,alpha";
  out << '\n';
  const Matrix<double> distance = stats.mean_distance(), within1 = stats.within_1(),
                       within2 = stats.within_2(), mass = stats.patch_mass();
  char buffer[160];
  for (Index l = 0; l < stats.layers(); ++l)
    for (Index h = 0; h < stats.heads(); ++h) {
      std::snprintf(buffer, sizeof buffer, "%ld,%ld,%.6f,%.6f,%.6f,%.6f,%.6f",
                    static_cast<long>(l), static_cast<long>(h), distance(l, h),
                    distance(l, h) * static_cast<double>(patch_size), within1(l, h), within2(l, h),
                    mass(l, h));
      out << buffer;
      if (quadratic) {
        const auto at = static_cast<std::size_t>(l);
        std::snprintf(buffer, sizeof buffer, ",%.6f,%.6f,%.6f",
                      quadratic->center_shift[at](h, 0), quadratic->center_shift[at](h, 1),
                      quadratic->alpha[at][h]);
        out << buffer;
      }
      out << '\n';
    }
  if (!out) throw IoError("cannot write '" + path + "'");
}

inline void write_json(const std::string& path, const LocalityArguments& args,
                       const AttentionDistances& stats, Index patch_size,
                       const std::optional<QuadraticHeads>& quadratic) {
  const auto table = [&](const Matrix<double>& m) {
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (Index l = 0; l < m.rows(); ++l) {
      std::vector<double> row(m.row(l).data(), m.row(l).data() + m.cols());
      rows.push_back(row);
    }
    return rows;
  };
  nlohmann::ordered_json json{
      {"model", args.model},
      {"input", args.input},
      {"images", stats.images()},
      {"queries", stats.queries()},
      {"grid", {stats.grid().height, stats.grid().width}},
      {"patch_size", patch_size},
      {"distance", "Euclidean, in patches (x patch_size: pixels)"},
      {"within", "Chebyshev radius in patches (1: the 3 x 3 patches around the query)"},
      {"mean_distance_patches", table(stats.mean_distance())},
      {"mean_distance_pixels", table(stats.mean_distance() * static_cast<double>(patch_size))},
      {"within_1", table(stats.within_1())},
      {"within_2", table(stats.within_2())},
      {"patch_mass", table(stats.patch_mass())}};
  if (quadratic) {
    nlohmann::ordered_json centers = nlohmann::ordered_json::array(),
                           alphas = nlohmann::ordered_json::array();
    for (std::size_t l = 0; l < quadratic->alpha.size(); ++l) {
      nlohmann::ordered_json layer = nlohmann::ordered_json::array();
      for (Index h = 0; h < quadratic->center_shift[l].rows(); ++h)
        layer.push_back({quadratic->center_shift[l](h, 0), quadratic->center_shift[l](h, 1)});
      centers.push_back(layer);
      alphas.push_back(std::vector<float>(quadratic->alpha[l].data(),
                                          quadratic->alpha[l].data() + quadratic->alpha[l].size()));
    }
    json["quadratic_center_shift"] = centers;
    json["quadratic_alpha"] = alphas;
  }
  std::ofstream out(path);
  if (!out || !(out << json.dump(2) << '\n')) throw IoError("cannot write '" + path + "'");
}

// The query's mean maps, one row per layer and one panel per head, the query's patch outlined.
inline void write_maps(const std::string& path, const LocalityArguments& args,
                       const AttentionDistances& stats, Index token) {
  const Grid2d& grid = stats.grid();
  const auto [row, col] = grid.position(token);
  const io::HeatmapBox box{static_cast<double>(col), static_cast<double>(row),
                           static_cast<double>(col + 1), static_cast<double>(row + 1)};
  const auto maps = stats.mean_query_maps();
  std::vector<std::vector<io::HeatmapPanel>> rows;
  for (std::size_t l = 0; l < maps.size(); ++l) {
    std::vector<io::HeatmapPanel> panels;
    for (std::size_t h = 0; h < maps[l].size(); ++h)
      panels.push_back({detail::concat("L", l, " H", h),
                        detail::concat("max ", std::round(maps[l][h].maxCoeff() * 100) / 100),
                        maps[l][h], box});
    rows.push_back(std::move(panels));
  }
  io::HeatmapGridOptions options;
  options.title = detail::concat("attention of patch (", row, ", ", col, ") averaged over ",
                                 stats.images(), " images");
  options.colour_bar_label = "attention / the panel's max";
  options.sampling = io::HeatmapSampling::nearest;
  options.panel_pixels = args.panel_size;
  io::write_heatmap_grid_png(path, rows, options);
}

inline void run(const LocalityArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const Grid2d grid = vit_patch_grid(config.vit);
  const Index token =
      args.query.empty()
          ? grid.leading + (grid.height / 2) * grid.width + grid.width / 2
          : query_token(parse_attention_query(args.query, "--query"), grid, "--query");
  if (!grid.has_position(token))
    throw ArgumentError(detail::concat("--query: expected a patch (ROW,COL or a patch token's "
                                       "index), got '", args.query, "' (the CLS token)"));
  const auto vit = io::load_vit_model<float>(args.model);
  Tensor<float> images = read_vit_images<float>(config, args.input);
  if (args.limit > 0 && args.limit < images.dim(0)) {
    Tensor<float> first({args.limit, images.dim(1), images.dim(2), images.dim(3)});
    std::copy_n(images.data(), first.size(), first.data());
    images = std::move(first);
  }
  const AttentionDistances stats =
      vit_attention_distances(vit, images, token, args.batch_size, {args.threads});
  const Index patch_size = config.vit.patch_size;
  const auto quadratic = detail_locality::quadratic_heads(vit);

  const Matrix<double> distance = stats.mean_distance(), within1 = stats.within_1(),
                       within2 = stats.within_2();
  std::printf("locality of %s on %ld images (%ld x %ld patches of %ld x %ld pixels): mean "
              "distance in pixels / fraction within 1 patch / within 2 patches (Chebyshev)\n",
              args.model.c_str(), static_cast<long>(stats.images()),
              static_cast<long>(grid.height), static_cast<long>(grid.width),
              static_cast<long>(patch_size), static_cast<long>(patch_size));
  for (Index l = 0; l < stats.layers(); ++l) {
    std::printf("  L%ld", static_cast<long>(l));
    for (Index h = 0; h < stats.heads(); ++h)
      std::printf("  %5.2f/%.2f/%.2f", distance(l, h) * static_cast<double>(patch_size),
                  within1(l, h), within2(l, h));
    std::printf("\n");
  }
  write_csv(args.output, stats, patch_size, quadratic);
  if (!args.json.empty()) write_json(args.json, args, stats, patch_size, quadratic);
  if (!args.maps.empty()) write_maps(args.maps, args, stats, token);
}

}  // namespace detail_locality

inline void add_locality_command(CLI::App& app) {
  auto args = std::make_shared<LocalityArguments>();
  CLI::App* cmd = app.add_subcommand(
      "locality",
      "How local a ViT's attention is: per layer and head, the mean distance of the attention "
      "from its query and the fraction within 1 and 2 patches, over a set of images "
      "(docs/interpretability.md)");
  cmd->add_option("--model", args->model, "ViT model directory")->required();
  cmd->add_option("--input", args->input,
                  "Images: a PNG, an IDX file (e.g. Fashion-MNIST's t10k-images-idx3-ubyte.gz) "
                  "or a safetensors file with `images` [B,C,H,W], as attnlens classify reads them")
      ->required();
  cmd->add_option("--limit", args->limit, "Only the first N images (0: all; default 1000)")
      ->default_str("1000")
      ->check(k_non_negative_number);
  cmd->add_option("--query", args->query,
                  "The patch whose attention --maps draws, ROW,COL or a token index (default: "
                  "the centre patch, (rows/2, cols/2))");
  cmd->add_option("--output", args->output,
                  "The CSV to write: layer, head, mean_distance_patches, mean_distance_pixels, "
                  "within_1, within_2, patch_mass (and a quadratic encoding's center_row, "
                  "center_col, alpha)")
      ->required();
  cmd->add_option("--json", args->json, "Also write the tables as JSON");
  cmd->add_option("--maps", args->maps,
                  "Also draw the query's attention averaged over the images, layers x heads, as "
                  "a PNG");
  cmd->add_option("--panel-size", args->panel_size,
                  "About the side of a --maps panel in pixels (default 96)")
      ->default_str("96")
      ->check(k_positive_number);
  cmd->add_option("--batch-size", args->batch_size, "Images per forward pass (default 100)")
      ->default_str("100")
      ->check(k_positive_number);
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->callback(
      [args] { run_reporting_errors("locality", [&] { detail_locality::run(*args); }); });
}

}  // namespace attnlens::cli
