// The attnlens tour (scripts/run-demo.sh): multi-head attention on random data, its error
// against PyTorch on the committed fixtures, its speed, PNG pictures of 2-D domain kernels, and
// classical image filters run by the attention engine on camera.png (denoise_demo.hpp).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/attnlens.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "denoise_demo.hpp"
#include "position_pictures.hpp"

namespace {

using namespace attnlens;

// A coarse picture of one attention map: darker = more weight.
void print_map(ConstMatrixMap<float> weights) {
  const char* shades = " .:-=+*#%@";
  for (Index i = 0; i < weights.rows(); ++i) {
    std::cout << "    ";
    for (Index j = 0; j < weights.cols(); ++j) {
      const int level = static_cast<int>(weights(i, j) * 9.999f / weights.row(i).maxCoeff());
      std::cout << shades[level] << shades[level];
    }
    std::cout << '\n';
  }
}

void random_attention() {
  std::cout << "1. Multi-head self-attention on random data (B=1, L=12, E=32, H=4, causal)\n";
  Rng rng(1);
  const MultiHeadAttention<float> mha({32, 4}, rng);
  Tensor<float> x({1, 12, 32});
  for (auto& v : x.storage()) v = rng.normal<float>();
  AttentionMask<float> mask;
  mask.causal = true;
  const auto result = mha.forward(x, mask, {AttentionWeights::per_head, {}});
  std::cout << "   output " << detail::shape_string(result.output.shape()) << ", weights "
            << detail::shape_string(result.weights.shape()) << "; head 0 attends:\n";
  print_map(result.weights.matrix({0, 0}));
}

// Every case of a PyTorch fixture; returns the largest error over outputs and weights.
template <class T>
double error_against_pytorch(const std::string& path) {
  const auto file = io::SafeTensors::load(path);
  double worst = 0.0;
  for (const auto& c : nlohmann::json::parse(file.metadata().at("cases"))) {
    const std::string prefix = c["name"].get<std::string>() + ".";
    const auto mha = io::load_multi_head_attention<T>(file, prefix, c["num_heads"].get<Index>());
    AttentionMask<T> mask = io::read_torch_masks<T>(
        file, prefix, {c["batch"], c["num_heads"], c["tgt_len"], c["src_len"]});
    mask.causal = c["causal"].get<bool>();
    const auto result =
        mha.forward(file.get<T>(prefix + "query"), file.get<T>(prefix + "key"),
                    file.get<T>(prefix + "value"), mask, {AttentionWeights::per_head, {}});
    for (const auto& [mine, theirs] :
         {std::pair{&result.output, "output"}, std::pair{&result.weights, "weights"}}) {
      const Tensor<T> expected = file.get<T>(prefix + theirs);
      for (Index i = 0; i < expected.size(); ++i)
        worst =
            std::max(worst, static_cast<double>(std::abs(mine->data()[i] - expected.data()[i])));
    }
  }
  return worst;
}

void pytorch_agreement(const std::string& fixtures) {
  std::cout
      << "\n2. Agreement with torch.nn.MultiheadAttention (committed fixtures, every mask type)\n";
  std::printf("   float32: max abs error %.2e (tolerance 1e-5)\n",
              error_against_pytorch<float>(fixtures + "/mha_f32.safetensors"));
  std::printf("   float64: max abs error %.2e (tolerance 1e-10)\n",
              error_against_pytorch<double>(fixtures + "/mha_f64.safetensors"));
}

void speed(Index B, Index L, Index E, Index H) {
  std::cout << "\n3. Speed of a full self-attention block (projections, attention, output)\n";
  Rng rng(2);
  const MultiHeadAttention<float> mha({E, H}, rng);
  Tensor<float> x({B, L, E});
  for (auto& v : x.storage()) v = rng.normal<float>();
  double best = 1e30;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    const auto result = mha.forward(x);
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!result.output.matrix({0}).allFinite()) std::cout << "   non-finite output!\n";
  }
  const double flops =
      static_cast<double>(B) * (8.0 * L * E * E + 4.0 * L * L * static_cast<double>(E));
  std::printf("   B=%ld L=%ld E=%ld H=%ld threads=%d: %.2f ms, %.1f GFLOP/s\n",
              static_cast<long>(B), static_cast<long>(L), static_cast<long>(E),
              static_cast<long>(H), thread_count(), best * 1e3, flops / best * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attnlens demo: multi-head attention, its agreement with PyTorch, its speed"};
  std::string fixtures = ATTNLENS_FIXTURE_DIR;
  app.add_option("--fixtures", fixtures, "Directory of the PyTorch fixtures")
      ->capture_default_str();
  std::string pictures = "attnlens-pictures";
  app.add_option("--pictures", pictures, "Directory for the PNG pictures")->capture_default_str();
  // examples/data, next to this file (CMake compiles it by its absolute path).
  std::string camera =
      (std::filesystem::path(__FILE__).parent_path() / "data" / "camera.png").string();
  app.add_option("--camera", camera, "The picture to denoise")->capture_default_str();
  int threads = 2;
  app.add_option("--threads", threads, "Threads for the denoising filters (0: OMP_NUM_THREADS or the core count)")
      ->capture_default_str();
  bool search = false;
  app.add_flag("--denoise-search", search,
               "Only run the grid search that chose the denoising parameters (minutes)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (search) {
      attnlens::demo::run_denoise_search(camera, threads);
      return 0;
    }
    random_attention();
    pytorch_agreement(fixtures);
    speed(1, 512, 512, 8);
    attnlens::demo::draw_domain_kernels(pictures);
    attnlens::demo::run_denoise_comparison(camera, pictures, threads);
  } catch (const std::exception& e) {
    std::cerr << "attnlens demo: error: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
