// Reading a PNG as a grayscale image with intensities in [0, 1] (8-bit / 255, 16-bit / 65535)
// for `attnlens denoise` and the demo, with stb_image (Debian's libstb-dev, compiled static).
// Colour pictures become gray by ITU-R BT.709 luma, 0.2125 R + 0.7154 G + 0.0721 B (the
// weights of skimage.color.rgb2gray); an alpha channel is ignored.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#define STBI_ONLY_PNG
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::examples {

// Throws IoError if the file is missing or not a PNG stb_image can decode.
inline Matrix<double> read_png_gray(const std::string& path) {
  int width = 0, height = 0, channels = 0;
  FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw IoError("png: cannot open '" + path + "'");
  const bool sixteen = stbi_is_16_bit_from_file(file) != 0;
  std::unique_ptr<void, void (*)(void*)> pixels(
      sixteen ? static_cast<void*>(stbi_load_from_file_16(file, &width, &height, &channels, 0))
              : static_cast<void*>(stbi_load_from_file(file, &width, &height, &channels, 0)),
      stbi_image_free);
  std::fclose(file);
  if (!pixels)
    throw IoError("png: cannot read '" + path + "' as a PNG image (" + stbi_failure_reason() + ")");
  const double full = sixteen ? 65535.0 : 255.0;
  const auto sample = [&](Index at) {
    return sixteen ? static_cast<double>(static_cast<const std::uint16_t*>(pixels.get())[at])
                   : static_cast<double>(static_cast<const std::uint8_t*>(pixels.get())[at]);
  };
  Matrix<double> image(height, width);
  for (Index p = 0; p < image.size(); ++p) {
    const Index at = p * channels;
    image.data()[p] =
        channels >= 3
            ? (0.2125 * sample(at) + 0.7154 * sample(at + 1) + 0.0721 * sample(at + 2)) / full
            : sample(at) / full;
  }
  return image;
}

}  // namespace attnlens::examples
