// io/fashion_mnist.hpp on Debian's dataset-fashion-mnist (scripts/run-tests.sh installs it):
// 60,000 training and 10,000 test images of 28 x 28 in [0, 1], 6,000 / 1,000 of each class,
// the first labels and pixel sums of each split as Python's gzip + numpy read them, the
// documented statistics; a missing dataset names the path and the install command; a
// directory of unpacked files loads too, and malformed ones are named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "attnlens/io/fashion_mnist.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

std::string fmnist_path(const char* file) {
  return std::string(io::k_fashion_mnist_directory) + "/" + file;
}

std::vector<Index> fmnist_label_counts(const std::vector<Index>& labels) {
  std::vector<Index> counts(10, 0);
  for (const Index label : labels) ++counts.at(static_cast<std::size_t>(label));
  return counts;
}

// Checked against the files with /usr/bin/python3:
//   x = np.frombuffer(gzip.open(f).read(), np.uint8, offset=16); y = ... offset=8
TEST(FashionMnist, TrainSplitHasTheDatasetsCountsAndFirstLabels) {
  const ImageDataset<float> train = io::load_fashion_mnist<float>(io::FashionMnistSplit::train);
  EXPECT_EQ(train.images.shape(), (Shape{60000, 1, 28, 28}));
  ASSERT_EQ(train.size(), 60000);
  EXPECT_EQ(fmnist_label_counts(train.labels), std::vector<Index>(10, 6000));
  EXPECT_EQ(std::vector<Index>(train.labels.begin(), train.labels.begin() + 10),
            (std::vector<Index>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  EXPECT_EQ(train.labels.back(), 5);
  EXPECT_EQ(train.class_names.size(), 10u);
  EXPECT_EQ(train.class_names[0], "T-shirt/top");
  EXPECT_EQ(train.class_names[9], "Ankle boot");
  // The first image's bytes sum to 76247; every intensity is a byte / 255 in [0, 1].
  const auto first = train.images.matrix({0, 0});
  EXPECT_NEAR(first.cast<double>().sum() * 255.0, 76247.0, 1e-2);
  const auto all = Eigen::Map<const Eigen::ArrayXf>(train.images.data(), train.images.size());
  EXPECT_EQ(all.minCoeff(), 0.0f);
  EXPECT_EQ(all.maxCoeff(), 1.0f);
}

TEST(FashionMnist, TestSplitHasTheDatasetsCountsAndFirstLabels) {
  const ImageDataset<double> test = io::load_fashion_mnist<double>(io::FashionMnistSplit::test);
  EXPECT_EQ(test.images.shape(), (Shape{10000, 1, 28, 28}));
  ASSERT_EQ(test.size(), 10000);
  EXPECT_EQ(fmnist_label_counts(test.labels), std::vector<Index>(10, 1000));
  EXPECT_EQ(std::vector<Index>(test.labels.begin(), test.labels.begin() + 10),
            (std::vector<Index>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  EXPECT_EQ(test.labels.back(), 5);
  EXPECT_NEAR(test.images.matrix({0, 0}).sum() * 255.0, 33456.0, 1e-8);
}

// The documented mean and standard deviation are those of the training bytes, from a
// histogram in exact integer sums.
TEST(FashionMnist, StatisticsAreTheTrainingSets) {
  const Tensor<std::uint8_t> bytes = io::read_idx_images(fmnist_path("train-images-idx3-ubyte.gz"));
  std::array<std::int64_t, 256> histogram{};
  for (const std::uint8_t b : bytes.storage()) ++histogram[b];
  double sum = 0, sum_squares = 0;
  for (int v = 0; v < 256; ++v) {
    sum += static_cast<double>(histogram[v]) * v;
    sum_squares += static_cast<double>(histogram[v]) * v * v;
  }
  const double n = static_cast<double>(bytes.size());
  const double mean = sum / n / 255.0;
  const double std = std::sqrt(sum_squares / n / (255.0 * 255.0) - mean * mean);
  EXPECT_NEAR(mean, io::k_fashion_mnist_mean, 1e-10);
  EXPECT_NEAR(std, io::k_fashion_mnist_std, 1e-10);
  EXPECT_NEAR(mean, 0.2860, 5e-5);  // torchvision's usual Normalize((0.2860,), (0.3530,))
  EXPECT_NEAR(std, 0.3530, 5e-5);

  // Normalized with them, the training images have mean 0 and standard deviation 1.
  io::FashionMnistOptions options;
  options.normalization = io::fashion_mnist_normalization();
  const ImageDataset<float> train =
      io::load_fashion_mnist<float>(io::FashionMnistSplit::train, options);
  double normalized_sum = 0, normalized_squares = 0;
  for (const float v : train.images.storage()) {
    normalized_sum += v;
    normalized_squares += static_cast<double>(v) * v;
  }
  const double normalized_mean = normalized_sum / n;
  EXPECT_NEAR(normalized_mean, 0.0, 1e-6);
  EXPECT_NEAR(std::sqrt(normalized_squares / n - normalized_mean * normalized_mean), 1.0, 1e-6);
  EXPECT_FLOAT_EQ(train.images.at({0, 0, 0, 0}),
                  static_cast<float>((0.0 - io::k_fashion_mnist_mean) / io::k_fashion_mnist_std));
}

TEST(FashionMnist, MissingDatasetNamesThePathAndTheInstallCommand) {
  io::FashionMnistOptions options;
  options.directory = "/nonexistent-dir/fashion-mnist";
  for (const auto split : {io::FashionMnistSplit::train, io::FashionMnistSplit::test}) {
    const auto load = [&] { io::load_fashion_mnist<float>(split, options); };
    expect_error_naming<IoError>(load, "sudo apt-get install dataset-fashion-mnist");
    expect_error_naming<IoError>(load, "/nonexistent-dir/fashion-mnist/");
  }
  expect_error_naming<IoError>(
      [&] { io::load_fashion_mnist(io::FashionMnistSplit::test, options); },
      "'/nonexistent-dir/fashion-mnist/t10k-images-idx3-ubyte.gz'");
}

// A directory of unpacked (or other) files in the dataset's names.
class FashionMnistDirectory : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = (std::filesystem::temp_directory_path() /
                  ("attnlens_test_fmnist_" + std::to_string(::getpid())))
                     .string();
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  void write(const char* file, const Shape& shape, const std::vector<std::uint8_t>& data,
             bool gzip = false) {
    io::write_idx(directory_ + "/" + file, Tensor<std::uint8_t>(shape, data), {gzip});
  }
  io::FashionMnistOptions options() const {
    io::FashionMnistOptions o;
    o.directory = directory_;
    return o;
  }

  std::string directory_;
};

TEST_F(FashionMnistDirectory, UnpackedFilesLoad) {
  std::vector<std::uint8_t> pixels(2 * 28 * 28, 51);
  pixels[28 * 28] = 255;
  write("t10k-images-idx3-ubyte", {2, 28, 28}, pixels);
  write("t10k-labels-idx1-ubyte", {2}, {7, 3});
  const ImageDataset<float> test =
      io::load_fashion_mnist(io::FashionMnistSplit::test, options());
  EXPECT_EQ(test.images.shape(), (Shape{2, 1, 28, 28}));
  EXPECT_EQ(test.labels, (std::vector<Index>{7, 3}));
  EXPECT_FLOAT_EQ(test.images.at({0, 0, 5, 5}), 0.2f);
  EXPECT_FLOAT_EQ(test.images.at({1, 0, 0, 0}), 1.0f);
  // The .gz is preferred when both exist.
  write("t10k-labels-idx1-ubyte.gz", {2}, {1, 2}, true);
  EXPECT_EQ(io::load_fashion_mnist(io::FashionMnistSplit::test, options()).labels,
            (std::vector<Index>{1, 2}));
  // Normalization per the options.
  io::FashionMnistOptions normalized = options();
  normalized.normalization = {{0.2}, {0.5}};
  EXPECT_NEAR(
      io::load_fashion_mnist(io::FashionMnistSplit::test, normalized).images.at({1, 0, 0, 0}), 1.6f,
      1e-6);
}

TEST_F(FashionMnistDirectory, MalformedFilesAreNamed) {
  write("train-images-idx3-ubyte.gz", {2, 30, 30}, std::vector<std::uint8_t>(1800), true);
  write("train-labels-idx1-ubyte.gz", {2}, {0, 1}, true);
  const std::string images = directory_ + "/train-images-idx3-ubyte.gz";
  const std::string labels = directory_ + "/train-labels-idx1-ubyte.gz";
  const auto load = [&] { io::load_fashion_mnist(io::FashionMnistSplit::train, options()); };
  expect_error_naming<IoError>(
      load, "idx '" + images + "': Fashion-MNIST images are 28 x 28, got 30 x 30");
  write("train-images-idx3-ubyte.gz", {3, 28, 28}, std::vector<std::uint8_t>(3 * 784), true);
  expect_error_naming<IoError>(load, "idx '" + labels + "': 2 labels for the 3 images");
  write("train-labels-idx1-ubyte.gz", {3}, {0, 10, 1}, true);
  expect_error_naming<IoError>(load, "idx '" + labels + "': label 10 at index 1");
  write("train-labels-idx1-ubyte.gz", {3, 1, 1}, {0, 1, 1}, true);
  expect_error_naming<IoError>(load, "declares 3 dimensions (images), expected 0x00000801");
}

}  // namespace
}  // namespace attnlens
