// Also FashionMnistVitCliTest, for the commands on Fashion-MNIST (prune, trigger): a tiny random
// Fashion-MNIST ViT's model directory `vit` and the data set's images as it sees them; and
// csv_rows, a CSV file's lines split at commas.
// A CliTest for the commands on a ViT classifier's image (attribute, tree): a small random ViT's
// model directory `vit` (small_vit_config(12, 3): CLS and 3 x 3 patches of 4 pixels, two heads,
// three classes), four 12 x 12 IDX images `images.idx`, each image as the model sees it, and a
// model directory without a head for the bad-input checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "attnlens/image/augment.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/image_dataset.hpp"
#include "support/cli_test.hpp"
#include "support/vit_models.hpp"

namespace attnlens::testing {

class VitClassifierCliTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = small_vit_config(/*image_size*/ 12, /*num_layers*/ 3);
    save_random_vit(config_, path("vit"), 23);
    Tensor<std::uint8_t> bytes({4, 12, 12});
    for (Index i = 0; i < bytes.size(); ++i) bytes.data()[i] = static_cast<std::uint8_t>(i * 37);
    io::write_idx(path("images.idx"), bytes, io::IdxWriteOptions{false});
  }

  // Image `index` of images.idx as the model sees it: bytes / 255, normalized with the config's
  // mean and std.
  Tensor<float> model_image(Index index) const {
    const Tensor<float> all = io::unit_image_batch<float>(io::read_idx_images(path("images.idx")));
    Tensor<float> image({1, 1, 12, 12});
    std::copy_n(all.data() + index * image.size(), image.size(), image.data());
    normalize_images(image, ImageNormalization{config_.mean, config_.std});
    return image;
  }

  // The directory of the same ViT without a head (num_classes 0), written by this call.
  std::string headless_vit() const {
    io::VitModelConfig features = config_;
    features.vit.num_classes = 0;
    features.class_names.clear();
    save_random_vit(features, path("features"), 5);
    return path("features");
  }

  io::VitModelConfig config_;
};

// fashion_mnist_vit_config(2) (2 layers of 2 heads, 4 x 4 patches of 7 pixels) with random
// parameters (seed 43) in `vit`, on Debian's dataset-fashion-mnist.
class FashionMnistVitCliTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = fashion_mnist_vit_config(/*num_layers*/ 2);
    save_random_vit(config_, path("vit"), 43);
  }

  // The first `count` images of a split (0: all), normalized as the model sees them.
  ImageDataset<float> fashion_mnist_split(io::FashionMnistSplit split, Index count = 0) const {
    io::FashionMnistOptions options;
    options.normalization = ImageNormalization{config_.mean, config_.std};
    return first_examples(io::load_fashion_mnist<float>(split, options), count);
  }

  io::VitModelConfig config_;
};

// The CSV file's lines split at commas (no quoted fields).
inline std::vector<std::vector<std::string>> csv_rows(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> fields;
    std::istringstream fields_in(line);
    for (std::string field; std::getline(fields_in, field, ',');) fields.push_back(field);
    rows.push_back(fields);
  }
  return rows;
}

}  // namespace attnlens::testing
