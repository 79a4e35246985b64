// attnlens tree: the attribution tree (interpret/attribution_tree.hpp, docs/interpretability.md)
// of one image of a ViT classifier: every layer's attention attribution at the target class
// (left rule, m = 64 by default, as attattr runs it for trees), the tree as JSON, and optionally
// as a Graphviz digraph and as a picture over the image's patches.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/interpret/attention_maps.hpp"
#include "attnlens/interpret/attribution.hpp"
#include "attnlens/interpret/attribution_tree.hpp"
#include "attnlens/io/attribution_tree_png.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/checks.hpp"
#include "cli/command_train.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct TreeArguments {
  std::string model, input, output, dot, png, root;
  Index index = 0, target = 0, steps = 64;
  double tau = 0.4;
  bool target_given = false;
  int threads = 0;
};

namespace detail_tree {

// "CLS" or "(row, col)" of a token of the ViT's grid.
inline std::string token_place(Index t, const Grid2d& grid) {
  if (!grid.has_position(t)) return "CLS";
  const auto [row, col] = grid.position(t);
  return detail::concat("(", row, ", ", col, ")");
}

// The file's JSON, keys in this order: what was asked and the tree, nodes with their patch (or
// "cls": true).
inline nlohmann::ordered_json tree_json(const AttributionTree& tree, const TreeArguments& args,
                                        const io::VitModelConfig& config, const Grid2d& grid,
                                        Index target, double probability) {
  nlohmann::ordered_json nodes = nlohmann::ordered_json::array();
  nlohmann::ordered_json edges = nlohmann::ordered_json::array();
  for (const Index t : tree.nodes) {
    nlohmann::ordered_json node = {{"token", t}};
    if (grid.has_position(t)) {
      const auto [row, col] = grid.position(t);
      node["row"] = row;
      node["col"] = col;
    } else {
      node["cls"] = true;
    }
    nodes.push_back(node);
  }
  for (const AttributionTreeEdge& e : tree.edges)
    edges.push_back({{"layer", e.layer}, {"from", e.from}, {"to", e.to}, {"weight", e.weight}});
  nlohmann::ordered_json out = {
      {"image", args.index},
      {"target", target},
      {"target_name", target < static_cast<Index>(config.class_names.size())
                          ? config.class_names[static_cast<std::size_t>(target)]
                          : std::to_string(target)},
      {"predicted", !args.target_given},
      {"probability", probability},
      {"steps", args.steps},
      {"rule", "left"},
      {"tau", args.tau},
      {"grid", {{"rows", grid.height}, {"cols", grid.width}, {"class_token", grid.leading > 0}}},
      {"root", tree.root},
      {"top_layer", tree.top_layer},
      {"nodes", nodes},
      {"edges", edges}};
  return out;
}

inline std::string hex_colour(const io::PlotColour& c) {
  char text[8];
  std::snprintf(text, sizeof text, "#%02x%02x%02x", c.red, c.green, c.blue);
  return text;
}

// A Graphviz digraph: a node per token (the root bold), an edge per tree edge labelled with its
// layer and weight, coloured as in the picture.
inline std::string tree_dot(const AttributionTree& tree, const Grid2d& grid,
                            const std::string& title) {
  std::string quoted;  // the title inside a DOT string
  for (const char c : title)
    quoted += c == '"' || c == '\\' ? std::string{'\\', c} : std::string(1, c);
  std::string dot = "digraph attribution_tree {\n  label=\"" + quoted + "\";\n  labelloc=t;\n" +
                    "  node [shape=box, fontname=\"sans\"];\n  edge [fontname=\"sans\"];\n";
  for (const Index t : tree.nodes)
    dot += detail::concat("  t", t, " [label=\"", t, "\\n", token_place(t, grid), "\"",
                          t == tree.root ? ", penwidth=3" : "", "];\n");
  for (const AttributionTreeEdge& e : tree.edges) {
    char weight[16];
    std::snprintf(weight, sizeof weight, "%.3f", e.weight);
    dot += detail::concat("  t", e.from, " -> t", e.to, " [label=\"L", e.layer, " ", weight,
                          "\", color=\"", hex_colour(io::tree_layer_colour(e.layer)), "\"];\n");
  }
  return dot + "}\n";
}

inline void run(const TreeArguments& args) {
  const io::VitModelConfig config = io::load_vit_config(args.model);
  require_vit_classifier(config, args.model, "no class to attribute", args.target_given,
                         args.target);
  detail::require_argument(std::isfinite(args.tau) && args.tau > 0 && args.tau <= 1, "--tau",
                           "a value in (0, 1]", args.tau);
  const Grid2d grid = vit_patch_grid(config.vit);
  AttributionTreeOptions options;
  options.tau = args.tau;
  options.class_token = vit_class_token(config.vit);
  if (!args.root.empty())
    options.root = query_token(parse_attention_query(args.root, "--root"), grid, "--root");
  AttributionOptions attribution;
  attribution.steps = args.steps;
  attribution.parallel.threads = args.threads;
  riemann_points(attribution);

  const Tensor<float> images = read_vit_images<float>(config, args.input);
  const Tensor<float> image = selected_image(images, args.index);
  const VisionTransformer<float> vit = io::load_vit_model<float>(args.model);
  EncoderForwardOptions forward;
  forward.parallel = attribution.parallel;
  const Index target = args.target_given ? args.target : predicted_classes(vit, image, forward)[0];
  const double probability =
      target_probability(vit, image, {target}, forward, false).probability[0];
  const AttributionTree tree =
      attribution_tree(layer_attributions_of_image(vit, image, 0, target, attribution), options);

  const std::string what = detail::concat(
      "image ", args.index, ": class ", vit_class_label(config, target),
      args.target_given ? "" : " (predicted)", ", p = ", std::round(probability * 1000) / 1000);
  std::printf("%s; left rule, m = %ld, tau = %g\n", what.c_str(), static_cast<long>(args.steps),
              args.tau);
  std::printf("root %ld %s, %zu nodes, %zu edges (top layer %ld)\n", static_cast<long>(tree.root),
              token_place(tree.root, grid).c_str(), tree.nodes.size(), tree.edges.size(),
              static_cast<long>(tree.top_layer));
  for (const AttributionTreeEdge& e : tree.edges)
    std::printf("layer %ld: %ld %s -> %ld %s  %.3f\n", static_cast<long>(e.layer),
                static_cast<long>(e.from), token_place(e.from, grid).c_str(),
                static_cast<long>(e.to), token_place(e.to, grid).c_str(), e.weight);

  const std::string title = detail::concat("attribution tree of ", what, ", tau ", args.tau);
  if (!args.png.empty()) {
    io::AttributionTreePictureOptions picture;
    picture.title = title;
    picture.background = display_image(images, args.index);
    picture.grid = grid;
    picture.num_layers = config.vit.encoder.num_layers;
    io::write_attribution_tree_png(args.png, tree, picture);
  }
  if (!args.dot.empty()) detail_train::write_file(args.dot, tree_dot(tree, grid, title));
  detail_train::write_file(args.output,
                           tree_json(tree, args, config, grid, target, probability).dump(2) + "\n");
}

}  // namespace detail_tree

inline void add_tree_command(CLI::App& app) {
  auto args = std::make_shared<TreeArguments>();
  CLI::App* cmd = app.add_subcommand(
      "tree",
      "The attribution tree (Hao et al. 2021, as their attattr code builds it) of one image of a "
      "ViT classifier: which tokens take information from which, layer by layer, as JSON, "
      "Graphviz and a picture");
  add_vit_image_options(*cmd, args->model, args->input);
  cmd->add_option("--output", args->output,
                  "The JSON file to write: root, tau, target, probability, nodes (token, patch "
                  "row and col or cls) and edges (layer, from, to, weight)")
      ->required();
  cmd->add_option("--dot", args->dot,
                  "Also write the tree as a Graphviz digraph (edges labelled with their layer)");
  cmd->add_option("--png", args->png,
                  "Also draw the tree over the image: arrows between patch centres, one colour "
                  "per layer, the root ringed, CLS in a box above");
  cmd->add_option("--index", args->index, "Which image of --input, from 0 (default 0)")
      ->default_str("0");
  auto* target = cmd->add_option("--class", args->target,
                                 "The target class whose probability is attributed (default: "
                                 "the predicted one)");
  cmd->add_option("--steps", args->steps,
                  "Riemann steps m of the attribution, left rule (default 64, as attattr for "
                  "trees)")
      ->default_str("64")
      ->check(k_positive_number);
  cmd->add_option("--tau", args->tau,
                  "Keep edges whose layer score (heads summed, over the layer's maximum) is above "
                  "tau, in (0, 1] (default 0.4)")
      ->default_str("0.4");
  cmd->add_option("--root", args->root,
                  "The root: cls, a token index (CLS is 0) or a patch ROW,COL (default: the token "
                  "with the most attribution summed over the layers, not CLS)");
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->callback([args, target] {
    args->target_given = target->count() > 0;
    run_reporting_errors("tree", [&] { detail_tree::run(*args); });
  });
}

}  // namespace attnlens::cli
