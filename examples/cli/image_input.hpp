// The images of `attnlens classify` (and `encode`, `eval` on a ViT directory), as the model's
// input B x C x H x W: a safetensors file's `images` tensor taken as it is (already
// normalized, as a PyTorch model would be fed), or pixels in [0, 1] from a PNG (one image,
// gray: a 1-channel model) or an IDX file (N x H x W bytes / 255: a 1-channel model), normalized
// with the config's mean and std.
#pragma once

#include <fstream>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/image/augment.hpp"
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

}  // namespace attnlens::cli
