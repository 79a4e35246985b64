// A downstream program of the compiled mode beyond one module: an encoder with a position
// encoding from the registry (the registry's entries and TransformerEncoder<double> live in
// attnlens::compiled), copied, saved as a model directory and loaded back.
#include <attnlens/attnlens.hpp>
#include <attnlens/io/model.hpp>
#include <cstdio>
#include <filesystem>

int main() {
  attnlens::io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16};
  config.encoder.position.type = attnlens::position_type_from_name("cauchy");
  attnlens::Rng rng(4);
  const attnlens::TransformerEncoder<double> encoder(config.encoder, rng);
  const attnlens::TransformerEncoder<double> copy = encoder;
  const auto dir = std::filesystem::temp_directory_path() / "attnlens_consumer_stack";
  attnlens::io::save_encoder_model(config, copy, dir.string());
  const auto loaded = attnlens::io::load_encoder_model<double>(dir.string());
  std::filesystem::remove_all(dir);
  attnlens::Tensor<double> x({1, 5, 8});
  for (auto& v : x.storage()) v = rng.normal<double>();
  const double difference =
      (encoder.forward(x).output.matrix({0}) - loaded.forward(x).output.matrix({0}))
          .cwiseAbs()
          .maxCoeff();
  std::printf("attnlens consumer stack: max difference %.3g\n", difference);
  return difference < 1e-12 ? 0 : 1;
}
