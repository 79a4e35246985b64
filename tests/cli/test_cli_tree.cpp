// `attnlens tree`: on a ViT's model directory and an IDX image, the tree in the JSON file is the
// library's attribution_tree of the same image's attributions (predicted class, m = 64, tau
// 0.4; and a given class, root, tau and m), with each node's patch or CLS; the Graphviz file has
// an edge per tree edge labelled with its layer, the PNG is a picture; --help names every option;
// a tau, root, index, class or step count out of range, a model without a head and images of the
// wrong size are one line and exit code 2, with no file written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution_tree.hpp"
#include "attnlens/io/vit_model.hpp"
#include "support/png_files.hpp"
#include "support/vit_cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliTree : public testing::VitClassifierCliTest {
 protected:
  std::string tree(const std::string& options) const {
    return "tree --model " + path("vit") + " --input " + path("images.idx") + " --output " +
           path("tree.json") + " --threads 1 " + options;
  }

  nlohmann::json read_tree_json() const {
    std::ifstream in(path("tree.json"));
    return nlohmann::json::parse(in);
  }

  void expect_bad_tree(const std::string& options, const std::string& word) const {
    expect_bad_input(tree(options), word);
    EXPECT_FALSE(std::filesystem::exists(path("tree.json")));
  }
};

// How far the library's tree is from changing: the least distance between tau and a score of a
// row that may give edges, and (for the automatic root) the root's lead over the next candidate
// relative to its score.
// The CLI is another binary, built with -march=native while the tests are not, so its float
// attributions differ from the library's here by a few ulps (about 1e-7 relative); a margin far
// above that means both must build the same tree.
double tree_decision_margin(const std::vector<Tensor<float>>& layers, const AttributionTree& tree,
                            const AttributionTreeOptions& options) {
  double margin = 1;
  for (const Matrix<double>& s : tree_layer_scores(layers, tree.root, options))
    for (Index i = 1; i < s.rows(); ++i)  // CLS (0) is not the root in these trees
      margin = std::min(margin, (s.row(i).array() - options.tau).abs().minCoeff());
  if (options.root) return margin;
  Matrix<double> combined = Matrix<double>::Zero(layers[0].dim(1), layers[0].dim(1));
  for (const Tensor<float>& a : layers)
    for (Index h = 0; h < a.dim(0); ++h) combined += a.matrix({h}).cast<double>();
  combined.diagonal().setZero();
  Vector<double> scores = combined.cwiseMax(0.0).rowwise().sum().tail(combined.rows() - 1);
  std::sort(scores.data(), scores.data() + scores.size());
  const double best = scores[scores.size() - 1], next = scores[scores.size() - 2];
  return std::min(margin, (best - next) / best);
}

// The JSON tree against the library's, nodes with their patches (3 x 3 grid after CLS).
void expect_json_tree(const nlohmann::json& json, const AttributionTree& expected) {
  EXPECT_EQ(json["root"], expected.root);
  EXPECT_EQ(json["top_layer"], expected.top_layer);
  ASSERT_EQ(json["nodes"].size(), expected.nodes.size()) << json.dump();
  for (std::size_t n = 0; n < expected.nodes.size(); ++n) {
    const nlohmann::json& node = json["nodes"][n];
    const Index t = expected.nodes[n];
    EXPECT_EQ(node["token"], t);
    if (t == 0) {
      EXPECT_EQ(node["cls"], true);
    } else {
      EXPECT_EQ(node["row"], (t - 1) / 3);
      EXPECT_EQ(node["col"], (t - 1) % 3);
    }
  }
  ASSERT_EQ(json["edges"].size(), expected.edges.size()) << json.dump();
  for (std::size_t e = 0; e < expected.edges.size(); ++e) {
    const nlohmann::json& edge = json["edges"][e];
    EXPECT_EQ(edge["layer"], expected.edges[e].layer);
    EXPECT_EQ(edge["from"], expected.edges[e].from);
    EXPECT_EQ(edge["to"], expected.edges[e].to);
    // A few ulps of float apart (the CLI's -march=native build, above); 1e-5 is far above that.
    EXPECT_NEAR(edge["weight"].get<double>(), expected.edges[e].weight, 1e-5);
  }
}

TEST_F(CliTree, TreeIsTheLibrarysTree) {
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  const Tensor<float> image = model_image(2);
  const Index predicted = predicted_classes(vit, image)[0];
  AttributionOptions attribution;
  attribution.steps = 64;
  const std::vector<Tensor<float>> layers =
      layer_attributions_of_image(vit, image, 0, predicted, attribution);
  const AttributionTree expected = attribution_tree(layers);
  EXPECT_GT(tree_decision_margin(layers, expected, {}), 1e-4);
  EXPECT_GE(expected.edges.size(), 3u);

  const auto run =
      run_cli(tree("--index 2 --dot " + path("tree.dot") + " --png " + path("tree.png")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("(predicted)"), std::string::npos) << run.output;
  const nlohmann::json json = read_tree_json();
  expect_json_tree(json, expected);
  EXPECT_EQ(json["target"], predicted);
  EXPECT_EQ(json["predicted"], true);
  EXPECT_EQ(json["target_name"], config_.class_names[static_cast<std::size_t>(predicted)]);
  EXPECT_EQ(json["tau"], 0.4);
  EXPECT_EQ(json["steps"], 64);
  EXPECT_EQ(json["image"], 2);
  EXPECT_NEAR(json["probability"].get<double>(),
              target_probability(vit, image, {predicted}, {}, false).probability[0], 1e-6);
  EXPECT_EQ(json["grid"]["rows"], 3);
  EXPECT_EQ(json["grid"]["class_token"], true);

  std::ifstream dot_file(path("tree.dot"));
  const std::string dot((std::istreambuf_iterator<char>(dot_file)), {});
  EXPECT_EQ(dot.rfind("digraph attribution_tree {", 0), 0u) << dot;
  for (const AttributionTreeEdge& e : expected.edges)
    EXPECT_NE(dot.find(detail::concat("t", e.from, " -> t", e.to, " [label=\"L", e.layer, " ")),
              std::string::npos)
        << dot;
  EXPECT_EQ(static_cast<std::size_t>(std::count(dot.begin(), dot.end(), '>')),
            expected.edges.size());
  const testing::RgbPicture picture = testing::read_rgb_picture(path("tree.png"));
  EXPECT_GT(picture.width, 12 * 37);  // the 12 x 12 image enlarged about to 448, and a legend
  EXPECT_GT(picture.height, 12 * 37);
}

TEST_F(CliTree, GivenClassRootTauAndSteps) {
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  const Tensor<float> image = model_image(0);
  const Index other = (predicted_classes(vit, image)[0] + 1) % 3;
  AttributionOptions attribution;
  attribution.steps = 8;
  const std::vector<Tensor<float>> layers =
      layer_attributions_of_image(vit, image, 0, other, attribution);
  AttributionTreeOptions options;
  options.tau = 0.3;
  options.root = 5;  // patch (1, 1)
  const AttributionTree expected = attribution_tree(layers, options);
  EXPECT_GT(tree_decision_margin(layers, expected, options), 1e-4);
  const auto run =
      run_cli(tree(detail::concat("--class ", other, " --root 1,1 --tau 0.3 --steps 8")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json json = read_tree_json();
  expect_json_tree(json, expected);
  EXPECT_EQ(json["predicted"], false);
  EXPECT_EQ(json["target"], other);

  ASSERT_EQ(run_cli(tree("--root cls --steps 4")).exit_code, 0);
  EXPECT_EQ(read_tree_json()["root"], 0);
  EXPECT_EQ(read_tree_json()["nodes"][0]["cls"], true);
  ASSERT_EQ(run_cli(tree("--root 7 --steps 4")).exit_code, 0);
  EXPECT_EQ(read_tree_json()["root"], 7);
}

TEST_F(CliTree, HelpNamesEveryOption) {
  const auto help = run_cli("tree --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--input", "--output", "--dot", "--png", "--index",
                             "--class", "--steps", "--tau", "--root", "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliTree, BadOptionsNameTheProblem) {
  expect_bad_tree("--tau 0", "--tau: expected a value in (0, 1], got 0");
  expect_bad_tree("--tau 1.5", "--tau: expected a value in (0, 1], got 1.5");
  expect_bad_tree("--tau nan", "--tau");
  expect_bad_tree("--root 3,0", "--root: expected ROW,COL on the 3 x 3 patch grid");
  expect_bad_tree("--root 10", "--root: expected a token index in 0..9");
  expect_bad_tree("--root middle", "--root: expected cls, a token index or ROW,COL, got 'middle'");
  expect_bad_tree("--index 4", "--index: expected 0..3 (the input holds 4 images), got 4");
  expect_bad_tree("--class 3", "--class: expected a class in 0..2, got 3");
  expect_bad_tree("--steps 0", "--steps");
  io::write_idx(path("small.idx"), Tensor<std::uint8_t>({2, 8, 8}), io::IdxWriteOptions{false});
  expect_bad_input("tree --model " + path("vit") + " --input " + path("small.idx") + " --output " +
                       path("tree.json"),
                   "[B, 1, 12, 12]");
  expect_bad_input("tree --model " + headless_vit() + " --input " + path("images.idx") +
                       " --output " + path("tree.json"),
                   "has no head (num_classes 0)");
  EXPECT_FALSE(std::filesystem::exists(path("tree.json")));
}

}  // namespace
}  // namespace attnlens
