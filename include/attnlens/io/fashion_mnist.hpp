// Fashion-MNIST (Xiao, Rasul and Vollgraf 2017: 70,000 grayscale 28 x 28 images of ten kinds of
// clothing, 60,000 to train on and 10,000 to test) as Debian's dataset-fashion-mnist installs
// it: the four gzip IDX files in /usr/share/datasets/fashion-mnist. A split loads as a batch
// N x 1 x 28 x 28 of intensities in [0, 1], normalized if asked, and its labels. Reads with
// io/idx.hpp, so it needs zlib (the CMake target attnlens::data).
#pragma once

#include <sys/stat.h>

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/image/augment.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/train/image_dataset.hpp"

namespace attnlens::io {

inline constexpr const char* k_fashion_mnist_directory = "/usr/share/datasets/fashion-mnist";
inline constexpr const char* k_fashion_mnist_install = "sudo apt-get install dataset-fashion-mnist";
inline constexpr Index k_fashion_mnist_classes = 10;
inline constexpr Index k_fashion_mnist_side = 28;

// The labels' names, by label (the dataset's README).
inline constexpr std::array<std::string_view, k_fashion_mnist_classes> k_fashion_mnist_class_names =
    {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
     "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// The training images' mean and standard deviation (population, over all 47,040,000 pixels
// of intensity byte / 255), computed in double: torchvision's Normalize((0.2860,), (0.3530,))
// to four places. The test split's are 0.2868492807 and 0.3524441532; a model normalizes its
// test images with the training statistics.
inline constexpr double k_fashion_mnist_mean = 0.2860405970;
inline constexpr double k_fashion_mnist_std = 0.3530242445;

// Normalize((x - mean) / std) with the training statistics above.
inline ImageNormalization fashion_mnist_normalization() {
  return {{k_fashion_mnist_mean}, {k_fashion_mnist_std}};
}

enum class FashionMnistSplit { train, test };

inline constexpr Named<FashionMnistSplit> k_fashion_mnist_split_names[] = {
    {FashionMnistSplit::train, "train"}, {FashionMnistSplit::test, "test"}};

struct FashionMnistOptions {
  // Where the four files are: {train,t10k}-{images-idx3,labels-idx1}-ubyte, with ".gz" or
  // without (as the dataset's site serves them, or unpacked).
  std::string directory = k_fashion_mnist_directory;
  // Applied to the [0, 1] intensities; the default leaves them as they are, and
  // fashion_mnist_normalization() gives the standard statistics.
  ImageNormalization normalization;
  IdxReadOptions idx;
};

namespace detail {

inline bool fashion_mnist_file_exists(const std::string& path) {
  struct stat status {};
  return stat(path.c_str(), &status) == 0;
}

// The split's file of `kind` ("images-idx3" or "labels-idx1"): the .gz if it exists, else the
// unpacked file; neither is the error that says how to install the dataset.
inline std::string fashion_mnist_file(const std::string& directory, FashionMnistSplit split,
                                      const char* kind) {
  const std::string base = directory + "/" +
                           (split == FashionMnistSplit::train ? "train" : "t10k") + "-" + kind +
                           "-ubyte";
  if (fashion_mnist_file_exists(base + ".gz")) return base + ".gz";
  if (fashion_mnist_file_exists(base)) return base;
  throw IoError(attnlens::detail::concat(
      "Fashion-MNIST: '", base, ".gz' does not exist (nor '", base,
      "'): install Debian's dataset with `", k_fashion_mnist_install, "` (it puts the files in ",
      k_fashion_mnist_directory,
      "), or set FashionMnistOptions::directory to a directory that holds them"));
}

}  // namespace detail

// The split's images (N x 1 x 28 x 28, byte / 255, then options.normalization) and labels.
// Throws IoError naming the path and the install command when the dataset is missing, and
// for malformed files (not 28 x 28, labels outside 0..9, image and label counts that differ).
template <class T = float>
ImageDataset<T> load_fashion_mnist(FashionMnistSplit split,
                                   const FashionMnistOptions& options = {}) {
  using attnlens::detail::concat;
  const std::string image_path =
      detail::fashion_mnist_file(options.directory, split, "images-idx3");
  const std::string label_path =
      detail::fashion_mnist_file(options.directory, split, "labels-idx1");
  const Tensor<std::uint8_t> bytes = read_idx_images(image_path, options.idx);
  const Shape& shape = bytes.shape();
  if (shape[1] != k_fashion_mnist_side || shape[2] != k_fashion_mnist_side)
    detail::idx_error(image_path,
                      concat("Fashion-MNIST images are 28 x 28, got ", shape[1], " x ", shape[2]));
  ImageDataset<T> data;
  data.labels = read_idx_labels(label_path, k_fashion_mnist_classes, options.idx);
  if (data.size() != shape[0])
    detail::idx_error(label_path, concat(data.size(), " labels for the ", shape[0], " images of '",
                                         image_path, "'"));
  data.images = unit_image_batch<T>(bytes);
  normalize_images(data.images, options.normalization);
  data.class_names.assign(k_fashion_mnist_class_names.begin(), k_fashion_mnist_class_names.end());
  return data;
}

}  // namespace attnlens::io
