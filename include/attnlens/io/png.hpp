// PNG files: reading a grayscale image with intensities in [0, 1], checked against hostile
// files before anything is decoded, and writing grayscale pictures (domain kernels) and RGB ones
// (attention maps). Decoding is stb_image's and encoding stb_image_write's (Debian's libstb-dev), both
// compiled static into each translation unit that includes this header: include it instead of
// <stb/stb_image.h> (or before it) and do not define STB_IMAGE_IMPLEMENTATION yourself; stb's
// functions are then available to the includer as well.
#pragma once

#if defined(STBI_INCLUDE_STB_IMAGE_H) || defined(STB_IMAGE_IMPLEMENTATION)
#error "include attnlens/io/png.hpp before <stb/stb_image.h>: it compiles stb_image itself"
#endif

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::io::detail {

// The largest block stb_image may allocate on this thread; decode_png_gray lowers it for one
// decode, so compressed data that inflates past what the header accounts for fails inside
// stb_image instead of growing its buffers to gigabytes.
inline thread_local std::size_t png_allocation_limit = std::numeric_limits<std::size_t>::max();
inline thread_local bool png_allocation_refused = false;

inline bool png_allocation_allowed(std::size_t bytes) {
  const bool allowed = bytes <= png_allocation_limit;
  if (!allowed) png_allocation_refused = true;
  return allowed;
}

inline void* png_malloc(std::size_t bytes) {
  return png_allocation_allowed(bytes) ? std::malloc(bytes) : nullptr;
}

inline void* png_realloc(void* block, std::size_t bytes) {
  return png_allocation_allowed(bytes) ? std::realloc(block, bytes) : nullptr;
}

}  // namespace attnlens::io::detail

#define STBI_ONLY_PNG
#define STB_IMAGE_STATIC
#define STBI_MALLOC(bytes) ::attnlens::io::detail::png_malloc(bytes)
#define STBI_REALLOC(block, bytes) ::attnlens::io::detail::png_realloc(block, bytes)
#define STBI_FREE(block) std::free(block)
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
#undef STB_IMAGE_IMPLEMENTATION  // a later #include <stb/stb_image.h> adds nothing

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace attnlens::io {

struct PngReadOptions {
  // The largest width x height read: 2^25 pixels, room for 8K UHD (7680 x 4320). Decoding one
  // then holds at most about 1 GiB (stb_image's inflated rows and 16-bit RGBA pixels, 8 bytes
  // each, and the double matrix), half of libFuzzer's default RSS limit.
  Index max_pixels = Index{1} << 25;
  // A chunk whose CRC does not match is an error, as in libpng; false skips the CRCs as
  // stb_image does (the fuzzer's way to the decoder with mutated bytes).
  bool check_crc = true;
};

namespace detail {

using attnlens::detail::concat;

inline constexpr std::size_t k_png_signature_bytes = 8;
inline constexpr char k_png_signature[k_png_signature_bytes + 1] = "\x89PNG\r\n\x1a\n";
// PNG's bound on chunk lengths.
inline constexpr std::uint32_t k_png_max_length = 0x7fffffff;
// The widest and tallest image stb_image decodes (2^24; PNG allows 2^31 - 1).
inline constexpr std::uint32_t k_png_max_extent = STBI_MAX_DIMENSIONS;
// Deflate writes at most 258 bytes per 2 bits (a length-258 match coded with 1-bit length and
// distance codes), so compressed data inflates at most 1032 times.
inline constexpr std::uint64_t k_deflate_max_ratio = 1032;

struct PngHeader {
  std::uint32_t width = 0, height = 0;
  int bit_depth = 0, colour_type = 0;
};

struct PngLayout {
  PngHeader header;
  std::uint64_t image_data_bytes = 0;  // all IDAT chunks together
  std::size_t end = 0;                 // one past IEND
  // Offsets of IDAT chunks without data: legal, but stb_image copies their 0 bytes into a
  // buffer it has not allocated yet (memcpy from a null pointer, undefined behaviour), so they
  // are left out of what it decodes.
  std::vector<std::size_t> empty_image_data;
};

[[noreturn]] inline void png_error(const std::string& where, const std::string& what) {
  throw IoError("png '" + where + "': " + what);
}

// a * b, or the largest uint64 if the product does not fit: sizes compared with it are too
// large either way.
inline std::uint64_t saturating_product(std::uint64_t a, std::uint64_t b) {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b)
    return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

inline std::uint32_t read_be32(const std::string& bytes, std::size_t at) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < 4; ++i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

// The CRC-32 of PNG chunks and zlib (ISO 3309, reflected polynomial 0xedb88320).
inline std::uint32_t png_crc(const char* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> entries{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      entries[n] = c;
    }
    return entries;
  }();
  std::uint32_t crc = 0xffffffffu;
  for (std::size_t i = 0; i < size; ++i)
    crc = table[(crc ^ static_cast<unsigned char>(data[i])) & 0xffu] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

// A chunk type for a one-line message: PNG's are four ASCII letters, anything else shows as '?'.
inline std::string printable_chunk_type(std::string type) {
  std::replace_if(
      type.begin(), type.end(),
      [](char c) { return !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')); }, '?');
  return type;
}

// Throws unless `bytes` starts with the PNG signature, telling an empty input, a different
// format and a file cut inside the signature apart.
inline void check_png_signature(const std::string& bytes, const std::string& where) {
  if (bytes.empty()) png_error(where, "empty (0 bytes), not a PNG image");
  const std::size_t compared = std::min(bytes.size(), k_png_signature_bytes);
  if (bytes.compare(0, compared, k_png_signature, compared) != 0)
    png_error(where, "not a PNG image (it does not start with the PNG signature)");
  if (bytes.size() < k_png_signature_bytes)
    png_error(where, concat("truncated: ", bytes.size(), " bytes, inside the 8-byte signature"));
}

// Samples per pixel in the compressed rows (a palette index is one), or 0 if PNG has no such
// colour type and bit depth.
inline int png_samples_per_pixel(int colour_type, int bit_depth) {
  const bool whole_bytes = bit_depth == 8 || bit_depth == 16;
  const bool below_byte = bit_depth == 1 || bit_depth == 2 || bit_depth == 4;
  switch (colour_type) {
    case 0:
      return whole_bytes || below_byte ? 1 : 0;  // gray
    case 2:
      return whole_bytes ? 3 : 0;  // RGB
    case 3:
      return bit_depth == 8 || below_byte ? 1 : 0;  // palette
    case 4:
      return whole_bytes ? 2 : 0;  // gray + alpha
    case 6:
      return whole_bytes ? 4 : 0;  // RGBA
    default:
      return 0;
  }
}

inline void check_png_extent(const char* what, std::uint32_t value, const std::string& where) {
  if (value < 1 || value > k_png_max_extent)
    png_error(where, concat(what, " ", value, " is outside the range [1, ", k_png_max_extent,
                            "] stb_image decodes"));
}

// IHDR's fields, from the chunk at `at` whose data is `length` bytes.
inline PngHeader read_png_header(const std::string& bytes, std::size_t at, std::uint32_t length,
                                 const std::string& where) {
  const std::string type = bytes.substr(at + 4, 4);
  if (type != "IHDR")
    png_error(where, "the first chunk is '" + printable_chunk_type(type) + "', expected 'IHDR'");
  if (length != 13) png_error(where, concat("IHDR holds ", length, " bytes, expected 13"));
  PngHeader header;
  header.width = read_be32(bytes, at + 8);
  header.height = read_be32(bytes, at + 12);
  header.bit_depth = static_cast<unsigned char>(bytes[at + 16]);
  header.colour_type = static_cast<unsigned char>(bytes[at + 17]);
  check_png_extent("width", header.width, where);
  check_png_extent("height", header.height, where);
  if (png_samples_per_pixel(header.colour_type, header.bit_depth) == 0)
    png_error(where, concat("colour type ", header.colour_type, " with bit depth ",
                            header.bit_depth, " is not a PNG format"));
  return header;
}

// Walks the chunks from the signature to IEND: each must fit in `bytes` (a file cut short is
// reported as truncated, not as whatever stb_image trips over) and, with check_crc, match its
// CRC. Returns IHDR's fields and the IDAT total.
inline PngLayout read_png_layout(const std::string& bytes, const std::string& where,
                                 bool check_crc) {
  PngLayout layout;
  constexpr std::size_t k_chunk_overhead = 12;  // length, type, CRC
  for (std::size_t at = k_png_signature_bytes;;) {
    const std::size_t left = bytes.size() - at;
    if (left == 0)
      png_error(where, concat("truncated: the file ends at byte ", at, " before IEND"));
    if (left < k_chunk_overhead)
      png_error(where, concat("truncated: the chunk at byte ", at, " needs at least ",
                              k_chunk_overhead, " bytes, ", left, " remain"));
    const std::uint32_t length = read_be32(bytes, at);
    const std::string type = bytes.substr(at + 4, 4);
    if (length > k_png_max_length)
      png_error(where, concat("chunk '", printable_chunk_type(type), "' at byte ", at, " claims ",
                              length, " bytes, more than PNG's maximum ", k_png_max_length));
    if (length > left - k_chunk_overhead)
      png_error(where, concat("truncated: chunk '", printable_chunk_type(type), "' at byte ", at,
                              " needs ", length + k_chunk_overhead, " bytes, ", left, " remain"));
    const std::size_t crc_at = at + 8 + length;
    if (check_crc && read_be32(bytes, crc_at) != png_crc(bytes.data() + at + 4, length + 4))
      png_error(where, concat("chunk '", printable_chunk_type(type), "' at byte ", at,
                              " fails its CRC check (the file is corrupt)"));
    if (at == k_png_signature_bytes) layout.header = read_png_header(bytes, at, length, where);
    if (type == "IDAT") layout.image_data_bytes += length;
    if (type == "IDAT" && length == 0) layout.empty_image_data.push_back(at);
    at = crc_at + 4;
    if (type == "IEND") {
      layout.end = at;
      return layout;
    }
  }
}

// The inflated size of the rows of a non-interlaced image: a filter byte and the packed
// samples per row. An interlaced image's passes hold at least as much, since they split each
// row into pieces with a filter byte and whole bytes each.
inline std::uint64_t png_raw_bytes(const PngHeader& header) {
  const std::uint64_t row_bits = std::uint64_t{header.width} *
                                 png_samples_per_pixel(header.colour_type, header.bit_depth) *
                                 header.bit_depth;
  return saturating_product(header.height, 1 + (row_bits + 7) / 8);
}

inline std::string png_size_string(const PngHeader& header) {
  return concat(header.width, " x ", header.height);
}

// Rejects, before anything is decoded or allocated, an image with more pixels than allowed or
// more rows than its compressed data can inflate to (a decompression bomb).
inline void check_png_size(const PngLayout& layout, const PngReadOptions& options,
                           const std::string& where) {
  const std::uint64_t pixels = std::uint64_t{layout.header.width} * layout.header.height;
  if (pixels > static_cast<std::uint64_t>(options.max_pixels))
    png_error(where,
              concat(png_size_string(layout.header), " = ", pixels, " pixels exceeds the limit of ",
                     options.max_pixels, " (PngReadOptions::max_pixels)"));
  const std::uint64_t raw = png_raw_bytes(layout.header);
  if (raw > saturating_product(layout.image_data_bytes, k_deflate_max_ratio))
    png_error(where, concat(png_size_string(layout.header), " pixels need ", raw,
                            " bytes of rows, more than its ", layout.image_data_bytes,
                            " bytes of image data (IDAT) can inflate to (deflate's maximum is ",
                            k_deflate_max_ratio, ":1)"));
}

// The largest block stb_image allocates for a valid file: its copy of the IDAT data (doubled
// from 4 KiB as it grows), the inflated rows (doubled from the non-interlaced size; interlacing
// adds at most 6 bytes a row, so at most 4 times), or the pixels (up to 4 channels of 16 bits).
// Twice the largest leaves room; more is data the header does not account for.
inline std::uint64_t png_allocation_bound(const PngLayout& layout) {
  const std::uint64_t pixels = std::uint64_t{layout.header.width} * layout.header.height;
  const std::uint64_t largest = std::max({saturating_product(layout.image_data_bytes, 2) + 4096,
                                          saturating_product(png_raw_bytes(layout.header), 4),
                                          saturating_product(pixels, 8)});
  return saturating_product(largest, 2);
}

// Sets png_allocation_limit for one decode and restores it after.
class PngAllocationScope {
 public:
  explicit PngAllocationScope(std::uint64_t limit) : saved_(png_allocation_limit) {
    png_allocation_limit = static_cast<std::size_t>(
        std::min<std::uint64_t>(limit, std::numeric_limits<std::size_t>::max()));
    png_allocation_refused = false;
  }
  ~PngAllocationScope() { png_allocation_limit = saved_; }
  PngAllocationScope(const PngAllocationScope&) = delete;
  PngAllocationScope& operator=(const PngAllocationScope&) = delete;

 private:
  std::size_t saved_;
};

using StbPixels = std::unique_ptr<void, void (*)(void*)>;

// stb_image's pixels (8 or 16 bits a sample, as in the file) or an IoError with its reason.
inline StbPixels decode_png_pixels(const std::string& bytes, const PngLayout& layout,
                                   const std::string& where, int& channels) {
  if (layout.end > static_cast<std::size_t>(INT_MAX))
    png_error(where, concat("its ", layout.end, " bytes up to IEND exceed stb_image's limit of ",
                            INT_MAX));
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(layout.end);
  int width = 0, height = 0;
  PngAllocationScope scope(png_allocation_bound(layout));
  // stb_image keeps its last reason per thread and some of its failures set none: clear it (no
  // public call does) so an earlier decode's reason cannot show up here.
  stbi__g_failure_reason = nullptr;
  StbPixels pixels(
      layout.header.bit_depth == 16
          ? static_cast<void*>(stbi_load_16_from_memory(data, size, &width, &height, &channels, 0))
          : static_cast<void*>(stbi_load_from_memory(data, size, &width, &height, &channels, 0)),
      stbi_image_free);
  if (pixels) return pixels;
  if (png_allocation_refused)
    png_error(where, concat("its image data inflates past what a ", png_size_string(layout.header),
                            " image needs (a decompression bomb?)"));
  const char* reason = stbi_failure_reason();
  if (!reason) png_error(where, "cannot decode it (stb_image gives no reason)");
  if (std::string(reason) == "outofmem") throw std::bad_alloc();
  png_error(where, std::string("cannot decode it (stb_image: ") + reason + ")");
}

// The file up to IEND without its empty IDAT chunks (12 bytes each: length, type, CRC), and
// its layout: the same image.
inline std::pair<std::string, PngLayout> without_empty_image_data(const std::string& bytes,
                                                                  const PngLayout& layout) {
  constexpr std::size_t k_empty_chunk_bytes = 12;
  std::string stripped;
  stripped.reserve(layout.end);
  std::size_t from = 0;
  for (const std::size_t at : layout.empty_image_data) {
    stripped.append(bytes, from, at - from);
    from = at + k_empty_chunk_bytes;
  }
  stripped.append(bytes, from, layout.end - from);
  PngLayout stripped_layout = layout;
  stripped_layout.end = stripped.size();
  stripped_layout.empty_image_data.clear();
  return {std::move(stripped), stripped_layout};
}

// Intensities in [0, 1]: 8-bit / 255, 16-bit / 65535; colour by BT.709 luma (skimage's
// rgb2gray); alpha is ignored.
inline Matrix<double> gray_from_pixels(const void* pixels, const PngHeader& header, int channels) {
  const bool sixteen = header.bit_depth == 16;
  const double full = sixteen ? 65535.0 : 255.0;
  const auto sample = [&](Index at) {
    return sixteen ? static_cast<double>(static_cast<const std::uint16_t*>(pixels)[at])
                   : static_cast<double>(static_cast<const std::uint8_t*>(pixels)[at]);
  };
  // The luma weights sum to 1, but rounded they put white an ulp above 1.
  const auto luma = [&](Index at) {
    return std::min(
        1.0, (0.2125 * sample(at) + 0.7154 * sample(at + 1) + 0.0721 * sample(at + 2)) / full);
  };
  Matrix<double> image(static_cast<Index>(header.height), static_cast<Index>(header.width));
  for (Index p = 0; p < image.size(); ++p) {
    const Index at = p * channels;
    image.data()[p] = channels >= 3 ? luma(at) : sample(at) / full;
  }
  return image;
}

}  // namespace detail

// Decodes the PNG file held in `bytes` as a grayscale image (rows x cols = height x width) with
// intensities in [0, 1]: 8-bit samples / 255, 16-bit / 65535, colour by BT.709 luma
// 0.2125 R + 0.7154 G + 0.0721 B (skimage.color.rgb2gray's weights); alpha is ignored.
// `where` names the source in messages. Throws IoError for anything that is not a complete,
// valid PNG within `options`' limits, ArgumentError for bad options.
inline Matrix<double> decode_png_gray(const std::string& bytes, const std::string& where,
                                      const PngReadOptions& options = {}) {
  attnlens::detail::require_argument(options.max_pixels >= 1, "PngReadOptions::max_pixels", ">= 1",
                                     options.max_pixels);
  detail::check_png_signature(bytes, where);
  const detail::PngLayout layout = detail::read_png_layout(bytes, where, options.check_crc);
  detail::check_png_size(layout, options, where);
  int channels = 0;
  if (layout.empty_image_data.empty()) {
    const detail::StbPixels pixels = detail::decode_png_pixels(bytes, layout, where, channels);
    return detail::gray_from_pixels(pixels.get(), layout.header, channels);
  }
  const auto [stripped, stripped_layout] = detail::without_empty_image_data(bytes, layout);
  const detail::StbPixels pixels =
      detail::decode_png_pixels(stripped, stripped_layout, where, channels);
  return detail::gray_from_pixels(pixels.get(), layout.header, channels);
}

// Reads the PNG file at `path` as decode_png_gray does.
inline Matrix<double> read_png_gray(const std::string& path, const PngReadOptions& options = {}) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw IoError("png '" + path + "': cannot open the file");
  // The signature first: a device or a stream of something else (/dev/zero) is not read on.
  std::string bytes(detail::k_png_signature_bytes, '\0');
  file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<std::size_t>(file.gcount()));
  if (bytes == detail::k_png_signature) {
    // At most what a PNG of max_pixels can hold: its rows uncompressed (8 bytes a pixel,
    // 16-bit RGBA, deflate's stored blocks add 5 bytes in 65535) plus 64 MiB of other chunks,
    // so an endless or huge file is not read whole.
    const double rows = 8.0 * static_cast<double>(options.max_pixels) * (1.0 + 5.0 / 65535.0) +
                        static_cast<double>(1 << 24);
    const auto limit = static_cast<std::size_t>(rows) + (std::size_t{1} << 26);
    char buffer[1 << 16];
    while (file.read(buffer, sizeof buffer) || file.gcount() > 0) {
      bytes.append(buffer, static_cast<std::size_t>(file.gcount()));
      if (bytes.size() > limit)
        throw IoError(attnlens::detail::concat("png '", path, "': larger than ", limit,
                                               " bytes, the most an image of at most ",
                                               options.max_pixels, " pixels needs"));
    }
  }
  if (file.bad()) throw IoError("png '" + path + "': cannot read the file");
  return decode_png_gray(bytes, path, options);
}

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

// An 8-bit RGB picture: rows from the top, each pixel's red, green and blue bytes in turn.
struct RgbImage {
  Index height = 0, width = 0;
  std::vector<std::uint8_t> pixels;  // height * width * 3

  RgbImage() = default;
  RgbImage(Index height_, Index width_, std::uint8_t fill = 255)
      : height(height_), width(width_), pixels(static_cast<std::size_t>(height_ * width_ * 3), fill) {}
  std::uint8_t* pixel(Index y, Index x) {
    return pixels.data() + static_cast<std::size_t>((y * width + x) * 3);
  }
  const std::uint8_t* pixel(Index y, Index x) const {
    return pixels.data() + static_cast<std::size_t>((y * width + x) * 3);
  }
};

// Writes `image` as an 8-bit RGB PNG. Throws ArgumentError for an empty image or one whose
// pixels do not match its size, IoError if the file cannot be written.
inline void write_png_rgb(const std::string& path, const RgbImage& image) {
  attnlens::detail::require_argument(
      image.height > 0 && image.width > 0 && image.height <= INT_MAX / 3 &&
          image.width <= INT_MAX / 3 &&
          image.pixels.size() == static_cast<std::size_t>(image.height * image.width * 3),
      "write_png_rgb image", "height x width >= 1 x 1 with height * width * 3 bytes",
      attnlens::detail::concat(image.height, " x ", image.width, " with ", image.pixels.size(),
                               " bytes"));
  if (!stbi_write_png(path.c_str(), static_cast<int>(image.width), static_cast<int>(image.height),
                      3, image.pixels.data(), static_cast<int>(image.width * 3)))
    throw IoError("png: cannot write '" + path + "'");
}

}  // namespace attnlens::io
