// PNG files built byte by byte for the reader's tests: any IHDR (including ones that lie about
// the data), rows compressed with stb_image_write's zlib, chunks with their CRCs; and pictures
// read back as RGB (heat maps, attribution trees).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "attnlens/io/png.hpp"

namespace attnlens::testing {

inline std::string png_be32(std::uint32_t value) {
  return {static_cast<char>(value >> 24), static_cast<char>(value >> 16),
          static_cast<char>(value >> 8), static_cast<char>(value)};
}

inline std::string png_chunk(const std::string& type, const std::string& data) {
  const std::string body = type + data;
  return png_be32(static_cast<std::uint32_t>(data.size())) + body +
         png_be32(io::detail::png_crc(body.data(), body.size()));
}

inline std::string png_ihdr(std::uint32_t width, std::uint32_t height, int bit_depth,
                            int colour_type, int interlace = 0) {
  return png_chunk("IHDR", png_be32(width) + png_be32(height) + static_cast<char>(bit_depth) +
                               static_cast<char>(colour_type) + '\0' + '\0' +
                               static_cast<char>(interlace));
}

// A zlib stream of `raw`.
inline std::string png_zlib(const std::string& raw) {
  std::string copy = raw;  // stb_image_write takes a mutable buffer
  int size = 0;
  unsigned char* compressed = stbi_zlib_compress(reinterpret_cast<unsigned char*>(copy.data()),
                                                 static_cast<int>(copy.size()), &size, 8);
  std::string stream(reinterpret_cast<const char*>(compressed), static_cast<std::size_t>(size));
  std::free(compressed);
  return stream;
}

// A PNG file: signature, `ihdr`, `before_image_data` (PLTE, tRNS, ...), one IDAT holding
// `image_data` (a zlib stream) and IEND.
inline std::string png_file(const std::string& ihdr, const std::string& image_data,
                            const std::string& before_image_data = "") {
  return std::string(io::detail::k_png_signature) + ihdr + before_image_data +
         png_chunk("IDAT", image_data) + png_chunk("IEND", "");
}

// A non-interlaced image of `rows`, each an unfiltered scanline (the filter byte 0 is added).
inline std::string png_image(std::uint32_t width, int bit_depth, int colour_type,
                             const std::vector<std::string>& rows,
                             const std::string& before_image_data = "") {
  std::string raw;
  for (const std::string& row : rows) raw += '\0' + row;
  return png_file(png_ihdr(width, static_cast<std::uint32_t>(rows.size()), bit_depth, colour_type),
                  png_zlib(raw), before_image_data);
}

// An RGB picture read back with stb_image (empty if the file is not an image).
struct RgbPicture {
  int width = 0, height = 0;
  std::vector<unsigned char> rgb;
  const unsigned char* at(int y, int x) const { return rgb.data() + 3 * (y * width + x); }
};

inline RgbPicture read_rgb_picture(const std::string& path) {
  RgbPicture p;
  int channels = 0;
  unsigned char* pixels = stbi_load(path.c_str(), &p.width, &p.height, &channels, 3);
  if (!pixels) return p;
  p.rgb.assign(pixels, pixels + 3 * p.width * p.height);
  stbi_image_free(pixels);
  return p;
}

}  // namespace attnlens::testing
