// The images of `attnlens classify` (and `encode`, `eval` on a ViT directory), as the model's
// input B x C x H x W: a safetensors file's `images` tensor taken as it is (already
// normalized, as a PyTorch model would be fed), or pixels in [0, 1] from a PNG (one image,
// gray: a 1-channel model) or an IDX file (N x H x W bytes / 255: a 1-channel model), normalized
// with the config's mean and std. Also what the commands on a ViT classifier share: one image of
// the input, the image for display, the classifier and class checks and a class's label.
#pragma once

#include <algorithm>
#include <fstream>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/image/augment.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/io/png.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/vit_model.hpp"
#include "cli/checks.hpp"

namespace attnlens::cli {

// The config's input normalization (identity when it has none).
inline ImageNormalization vit_normalization(const io::VitModelConfig& config) {
  if (config.mean.empty()) return {};
  return {config.mean, config.std};
}

namespace detail_images {

// The file's first bytes, to tell a PNG from a safetensors or (gzipped) IDX file by content.
inline std::string leading_bytes(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(detail::concat("cannot open '", path, "'"));
  std::string bytes(count, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(count));
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  return bytes;
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace detail_images

template <class T>
Tensor<T> read_vit_images(const io::VitModelConfig& config, const std::string& path) {
  const VisionTransformerOptions& o = config.vit;
  const Shape expected_image{o.in_chans, o.image_height, o.image_width};
  const auto check_size = [&](const Tensor<T>& images, const std::string& what) {
    detail::require_shape(images.rank() == 4 && images.dim(0) > 0 && images.dim(1) == o.in_chans &&
                              images.dim(2) == o.image_height && images.dim(3) == o.image_width,
                          what,
                          detail::concat("[B, ", o.in_chans, ", ", o.image_height, ", ",
                                         o.image_width, "] (the model's in_chans and img_size)"),
                          detail::shape_string(images.shape()));
  };
  const auto one_channel = [&](const char* format) {
    if (o.in_chans != 1)
      throw ArgumentError(detail::concat("--input: ", format,
                                         " images are gray, but the model has ", o.in_chans,
                                         " input channels (give a safetensors file "
                                         "with `images` [B, C, H, W])"));
  };
  if (detail_images::ends_with(path, ".safetensors")) {
    const auto file = io::SafeTensors::load(path);
    require_known_tensors(file, path, {"images", "labels"});
    Tensor<T> images = file.get<T>("images");
    check_size(images, "tensor 'images' of --input");
    return images;
  }
  if (detail_images::leading_bytes(path, 8) == io::detail::k_png_signature) {
    one_channel("PNG");
    const Matrix<double> gray = io::read_png_gray(path);
    Tensor<T> images({1, 1, gray.rows(), gray.cols()});
    for (Index i = 0; i < gray.size(); ++i) images.data()[i] = static_cast<T>(gray.data()[i]);
    check_size(images, "the PNG image of --input");
    normalize_images(images, vit_normalization(config));
    return images;
  }
  one_channel("IDX");
  Tensor<T> images = io::unit_image_batch<T>(io::read_idx_images(path));
  check_size(images, "the IDX images of --input");
  normalize_images(images, vit_normalization(config));
  return images;
}

// Image `index` of `images` (B x C x H x W) as a batch of one; throws ArgumentError naming
// --index when there is no such image.
template <class T>
Tensor<T> selected_image(const Tensor<T>& images, Index index) {
  detail::require_argument(
      index >= 0 && index < images.dim(0), "--index",
      detail::concat("0..", images.dim(0) - 1, " (the input holds ", images.dim(0), " images)"),
      index);
  Tensor<T> image({1, images.dim(1), images.dim(2), images.dim(3)});
  std::copy_n(images.data() + index * image.size(), image.size(), image.data());
  return image;
}

// Image `b` scaled to [0, 1] for display, its smallest value black and its largest white
// (the model sees it normalized).
template <class T>
Tensor<double> display_image(const Tensor<T>& images, Index b) {
  const Index C = images.dim(1), H = images.dim(2), W = images.dim(3);
  Tensor<double> out({C == 3 ? 3 : 1, H, W});
  for (Index y = 0; y < H; ++y)
    for (Index x = 0; x < W; ++x)
      if (C == 3) {
        for (Index c = 0; c < 3; ++c)
          out.matrix({c})(y, x) = static_cast<double>(images.matrix({b, c})(y, x));
      } else {  // gray: the channels' mean
        double sum = 0;
        for (Index c = 0; c < C; ++c) sum += static_cast<double>(images.matrix({b, c})(y, x));
        out.matrix({0})(y, x) = sum / static_cast<double>(C);
      }
  const auto [low, high] = std::minmax_element(out.data(), out.data() + out.size());
  const double lo = *low, range = *high - *low;
  for (Index i = 0; i < out.size(); ++i)
    out.data()[i] = range > 0 ? (out.data()[i] - lo) / range : 0.5;
  return out;
}

// Throws ArgumentError naming --model unless the ViT has a head, and --class unless
// `target_given` is false or `target` is one of its classes.
inline void require_vit_classifier(const io::VitModelConfig& config, const std::string& model,
                                   const std::string& purpose, bool target_given, Index target) {
  const Index classes = config.vit.num_classes;
  if (classes == 0)
    throw ArgumentError(
        detail::concat("--model: '", model, "' has no head (num_classes 0): ", purpose));
  if (target_given)
    detail::require_argument(target >= 0 && target < classes, "--class",
                             detail::concat("a class in 0..", classes - 1), target);
}

// Throws ArgumentError naming --model unless the ViT classifies Fashion-MNIST's images (1 x 28 x
// 28, a head).
inline void require_fashion_mnist_classifier(const io::VitModelConfig& config,
                                             const std::string& model) {
  const VisionTransformerOptions& o = config.vit;
  if (o.num_classes == 0 || o.in_chans != 1 || o.image_height != io::k_fashion_mnist_side ||
      o.image_width != io::k_fashion_mnist_side)
    throw ArgumentError(detail::concat(
        "--model: expected a Fashion-MNIST classifier (1 x 28 x 28 images, a head), got '", model,
        "' with ", o.in_chans, " x ", o.image_height, " x ", o.image_width, " images and ",
        o.num_classes, " classes"));
}

// The --model (a ViT classifier's directory) and --input (its images, read_vit_images) options
// of the commands on one image of a ViT classifier, both required.
inline void add_vit_image_options(CLI::App& cmd, std::string& model, std::string& input) {
  cmd.add_option("--model", model,
                 "ViT model directory: config.json and model.safetensors (attnlens train)")
      ->required();
  cmd.add_option("--input", input,
                 "Images as for attnlens classify: a PNG, an IDX file or a .safetensors file "
                 "with `images` [B,C,H,W]")
      ->required();
}

// "c (name)" with the config's class name, or "c" when it has none.
inline std::string vit_class_label(const io::VitModelConfig& config, Index c) {
  return c < static_cast<Index>(config.class_names.size())
             ? detail::concat(c, " (", config.class_names[static_cast<std::size_t>(c)], ")")
             : std::to_string(c);
}

}  // namespace attnlens::cli
