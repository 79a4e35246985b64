// Writing grayscale PNG pictures (attention maps, domain kernels) with stb_image_write
// (Debian's libstb-dev, header only here: its functions are compiled static into each user).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::io {

// Writes `intensity` (rows x cols, values in [0, 1]; outside is clamped, NaN is black) as an
// 8-bit grayscale PNG, each entry drawn as a scale x scale block. Throws IoError if the file
// cannot be written.
template <class Derived>
void write_png_gray(const std::string& path, const Eigen::MatrixBase<Derived>& intensity,
                    int scale = 1) {
  attnlens::detail::require_argument(scale >= 1, "write_png_gray scale", ">= 1", scale);
  const Index rows = intensity.rows(), cols = intensity.cols();
  attnlens::detail::require_argument(rows > 0 && cols > 0, "write_png_gray image size", ">= 1 x 1",
                                     attnlens::detail::concat(rows, " x ", cols));
  const Index height = rows * scale, width = cols * scale;
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(height * width));
  for (Index y = 0; y < height; ++y)
    for (Index x = 0; x < width; ++x) {
      const double v = static_cast<double>(intensity(y / scale, x / scale));
      const double clamped = std::isnan(v) ? 0.0 : std::clamp(v, 0.0, 1.0);
      pixels[static_cast<std::size_t>(y * width + x)] =
          static_cast<std::uint8_t>(std::lround(255.0 * clamped));
    }
  if (!stbi_write_png(path.c_str(), static_cast<int>(width), static_cast<int>(height), 1,
                      pixels.data(), static_cast<int>(width)))
    throw IoError("png: cannot write '" + path + "'");
}

}  // namespace attnlens::io
