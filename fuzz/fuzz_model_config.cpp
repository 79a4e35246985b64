// libFuzzer target for the model format's config.json (attnlens/io/model.hpp and
// io/vit_model.hpp): any text must either give an encoder or a vision transformer, built and
// loaded from a fixed small model.safetensors, that runs on a small input, or throw an attnlens
// exception. Sizes that would allocate more than the weights
// hold, nesting, duplicate keys and integers beyond int64 are the findings this target is for
// (libFuzzer's -malloc_limit_mb reports any single large allocation).
#include <cstddef>
#include <cstdint>
#include <string>

#include "attnlens/io/model.hpp"
#include "attnlens/io/vit_model.hpp"

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

// A ViT of 8 x 8 images, patch 4, width 8, 2 heads, 2 blocks, 3 classes, quadratic relative
// positions, as the seed corpus's vit_quadratic.json describes it.
attnlens::io::VitModelConfig vit_weights_config() {
  attnlens::io::VitModelConfig config;
  attnlens::VisionTransformerOptions& o = config.vit;
  o.image_height = o.image_width = 8;
  o.patch_size = 4;
  o.in_chans = 1;
  o.num_classes = 3;
  o.encoder.layer = {8, 2, 16, attnlens::Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  o.relative_position.type = attnlens::PositionType::quadratic;
  return config;
}

const attnlens::io::SafeTensors& vit_weights() {
  static const attnlens::io::SafeTensors file = [] {
    attnlens::Rng rng(2);
    const attnlens::VisionTransformer<float> vit(vit_weights_config().vit, rng);
    return attnlens::io::SafeTensors::parse(attnlens::io::module_weights(vit).bytes());
  }();
  return file;
}

void run_encoder(const std::string& text) {
  const auto config = attnlens::io::parse_encoder_config(text);
  const auto encoder = attnlens::io::encoder_from_weights<float>(config, weights());
  attnlens::Tensor<float> src({1, 5, encoder.d_model()});
  for (Index i = 0; i < src.size(); ++i) src.data()[i] = 0.25f * static_cast<float>(i % 7) - 0.7f;
  (void)encoder.forward(src);
}

void run_vit(const std::string& text) {
  const auto config = attnlens::io::parse_vit_config(text);
  const auto vit = attnlens::io::vit_from_weights<float>(config, vit_weights());
  const auto& o = vit.options();
  attnlens::Tensor<float> images({1, o.in_chans, o.image_height, o.image_width});
  for (Index i = 0; i < images.size(); ++i)
    images.data()[i] = 0.25f * static_cast<float>(i % 5) - 0.5f;
  (void)vit.forward(images);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto run : {run_encoder, run_vit}) {
    try {
      run(text);
    } catch (const attnlens::IoError&) {
    } catch (const std::invalid_argument&) {  // ShapeError, ArgumentError
    }
  }
  return 0;
}
