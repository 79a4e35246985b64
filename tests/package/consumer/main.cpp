// A downstream project's first program: fails unless attnlens's attention rows sum to 1.
#include <attnlens/attnlens.hpp>
#include <cmath>
#include <cstdio>

int main() {
  attnlens::Rng rng(3);
  const attnlens::MultiHeadAttention<float> mha({16, 4}, rng);
  attnlens::Tensor<float> x({2, 5, 16});
  for (auto& v : x.storage()) v = rng.normal<float>();
  attnlens::MultiHeadForwardOptions options;
  options.weights = attnlens::AttentionWeights::averaged;
  const auto result = mha.forward(x, {}, options);
  const double row_sum = result.weights.matrix({1}).row(3).sum();
  std::printf("attnlens %d.%d.%d consumer: row sum %.6f\n", ATTNLENS_VERSION_MAJOR,
              ATTNLENS_VERSION_MINOR, ATTNLENS_VERSION_PATCH, row_sum);
  return std::abs(row_sum - 1.0) < 1e-5 && result.output.matrix({0}).allFinite() ? 0 : 1;
}
