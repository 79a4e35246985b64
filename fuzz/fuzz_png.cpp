// libFuzzer target for the PNG reader of attnlens/io/png.hpp: any input must either decode to
// an image of at most PngReadOptions::max_pixels intensities, all in [0, 1], or throw IoError.
// Each input is decoded twice: as given (signature, chunk walk, CRCs) and with CRCs unchecked,
// since mutated bytes almost never keep their CRCs and would not reach stb_image otherwise.
#include <cstddef>
#include <cstdint>
#include <string>

#include "attnlens/io/png.hpp"

namespace {

void decode_checked(const std::string& bytes, const attnlens::io::PngReadOptions& options) {
  try {
    const attnlens::Matrix<double> image = attnlens::io::decode_png_gray(bytes, "input", options);
    if (image.size() == 0 || image.size() > options.max_pixels) __builtin_trap();
    if (!(image.minCoeff() >= 0.0 && image.maxCoeff() <= 1.0)) __builtin_trap();
  } catch (const attnlens::IoError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  decode_checked(bytes, {});
  attnlens::io::PngReadOptions unchecked;
  unchecked.check_crc = false;
  decode_checked(bytes, unchecked);
  return 0;
}
