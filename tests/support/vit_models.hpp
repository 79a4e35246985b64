// The small gray ViTs the CLI and interpret tests run on. small_vit_config: image_size x
// image_size pixels in patches of 4, two heads of width 8, pre-norm GELU blocks and a final
// norm, three classes (circle, square, line), images normalized with mean 0.3 and std 0.4.
// fashion_mnist_vit_config: a Fashion-MNIST classifier as small (28 x 28 in patches of 7, two
// heads of width 8), with the data set's classes and statistics.
#pragma once

#include <cstdint>
#include <string>

#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/vit_model.hpp"

namespace attnlens::testing {

inline io::VitModelConfig small_vit_config(Index image_size, Index num_layers) {
  io::VitModelConfig config;
  config.vit.image_height = image_size;
  config.vit.image_width = image_size;
  config.vit.patch_size = 4;
  config.vit.in_chans = 1;
  config.vit.num_classes = 3;
  config.vit.encoder.layer = {8, 2, 16, Activation::gelu, 1e-6, true, true};
  config.vit.encoder.num_layers = num_layers;
  config.vit.encoder.final_norm = true;
  config.mean = {0.3};
  config.std = {0.4};
  config.class_names = {"circle", "square", "line"};
  return config;
}

inline io::VitModelConfig fashion_mnist_vit_config(Index num_layers) {
  io::VitModelConfig config = small_vit_config(io::k_fashion_mnist_side, num_layers);
  config.vit.patch_size = 7;
  config.vit.num_classes = 10;
  config.vit.encoder.layer.d_model = 16;
  config.vit.encoder.layer.dim_feedforward = 32;
  config.mean = {io::k_fashion_mnist_mean};
  config.std = {io::k_fashion_mnist_std};
  config.class_names.assign(io::k_fashion_mnist_class_names.begin(),
                            io::k_fashion_mnist_class_names.end());
  return config;
}

// Writes the model directory of `config` with parameters drawn from `seed`.
inline void save_random_vit(const io::VitModelConfig& config, const std::string& directory,
                            std::uint64_t seed) {
  Rng rng(seed);
  io::save_vit_model(config, VisionTransformer<float>(config.vit, rng), directory);
}

}  // namespace attnlens::testing
