// libFuzzer target for the model format's config.json (attnlens/io/model.hpp): any text must
// either give an encoder, built and loaded from a fixed small model.safetensors, that runs on a
// small input, or throw an attnlens exception. Sizes that would allocate more than the weights
// hold, nesting, duplicate keys and integers beyond int64 are the findings this target is for
// (libFuzzer's -malloc_limit_mb reports any single large allocation).
#include <cstddef>
#include <cstdint>
#include <string>

#include "attnlens/io/model.hpp"

namespace {

using attnlens::Index;

// The weights every input is loaded against: an encoder of d_model 8, 2 heads, 2 layers with
// T5 buckets and bilateral attention, as the seed corpus's first config describes it.
attnlens::io::EncoderModelConfig weights_config() {
  attnlens::io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16};
  config.encoder.layer.attention.type = attnlens::AttentionVariantType::bilateral;
  config.encoder.num_layers = 2;
  config.encoder.position.type = attnlens::PositionType::t5;
  config.encoder.position.num_buckets = 8;
  config.encoder.position.max_distance = 16;
  return config;
}

const attnlens::io::SafeTensors& weights() {
  static const attnlens::io::SafeTensors file = [] {
    attnlens::Rng rng(1);
    const attnlens::TransformerEncoder<float> encoder(weights_config().encoder, rng);
    return attnlens::io::SafeTensors::parse(attnlens::io::module_weights(encoder).bytes());
  }();
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = attnlens::io::parse_encoder_config(text);
    const auto encoder = attnlens::io::encoder_from_weights<float>(config, weights());
    attnlens::Tensor<float> src({1, 5, encoder.d_model()});
    for (Index i = 0; i < src.size(); ++i) src.data()[i] = 0.25f * static_cast<float>(i % 7) - 0.7f;
    (void)encoder.forward(src);
  } catch (const attnlens::IoError&) {
  } catch (const std::invalid_argument&) {  // ShapeError, ArgumentError
  }
  return 0;
}
