// io/png.hpp: write_png_gray's picture read back with stb_image holds the intensities, scaled
// up, write_png_rgb's its bytes; read_png_gray / decode_png_gray give 8-bit / 255, 16-bit / 65535 and BT.709 luma for
// colour, interlaced or not, and reject hostile files (claimed sizes beyond the pixel limit or
// beyond what the data can inflate to, data inflating past the header, truncation at every
// byte, bad CRCs, other formats) with an IoError naming the file and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attnlens/io/png.hpp"  // and stb_image, to read the writer's files independently
#include "support/expect_error.hpp"
#include "support/png_files.hpp"
namespace attnlens {
namespace {

using testing::expect_error_naming;
using testing::png_be32;
using testing::png_chunk;
using testing::png_file;
using testing::png_ihdr;
using testing::png_image;
using testing::png_zlib;

std::string png_temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("attnlens_test_png_" + name)).string();
}

double png_luma(double r, double g, double b, double full) {
  return (0.2125 * r + 0.7154 * g + 0.0721 * b) / full;
}

// 3 x 2 8-bit gray: the bytes of row 0 and row 1.
const std::vector<std::string> k_png_gray_rows = {std::string("\x00\x80\xff", 3), "\x40\x01\xc8"};

void expect_png_error(const std::string& bytes, const std::string& word,
                      const io::PngReadOptions& options = {}) {
  expect_error_naming<IoError>([&] { io::decode_png_gray(bytes, "t.png", options); }, word);
  expect_error_naming<IoError>([&] { io::decode_png_gray(bytes, "t.png", options); },
                               "png 't.png': ");
}

TEST(Png, WritesGrayIntensitiesScaledUp) {
  const std::string path = png_temp_path("write.png");
  Matrix<double> intensity(2, 3);
  intensity << 0.0, 0.5, 1.0, 2.0, -1.0, 0.25;
  io::write_png_gray(path, intensity, 2);
  int width = 0, height = 0, channels = 0;
  unsigned char* pixels = stbi_load(path.c_str(), &width, &height, &channels, 0);
  ASSERT_NE(pixels, nullptr);
  EXPECT_EQ(width, 6);
  EXPECT_EQ(height, 4);
  EXPECT_EQ(channels, 1);
  const int expected[2][3] = {{0, 128, 255}, {255, 0, 64}};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 6; ++x) EXPECT_EQ(pixels[y * 6 + x], expected[y / 2][x / 2]) << y << x;
  stbi_image_free(pixels);
  std::filesystem::remove(path);
}

TEST(Png, WritesRgbPixels) {
  io::RgbImage image(2, 3, 0);
  for (Index y = 0; y < 2; ++y)
    for (Index x = 0; x < 3; ++x) {
      std::uint8_t* p = image.pixel(y, x);
      p[0] = static_cast<std::uint8_t>(10 * y + x);
      p[1] = static_cast<std::uint8_t>(100 + x);
      p[2] = static_cast<std::uint8_t>(200 + y);
    }
  const std::string path = png_temp_path("rgb.png");
  io::write_png_rgb(path, image);
  int width = 0, height = 0, channels = 0;
  unsigned char* pixels = stbi_load(path.c_str(), &width, &height, &channels, 0);
  std::filesystem::remove(path);
  ASSERT_NE(pixels, nullptr);
  EXPECT_EQ(width, 3);
  EXPECT_EQ(height, 2);
  EXPECT_EQ(channels, 3);
  EXPECT_EQ(std::vector<std::uint8_t>(pixels, pixels + 18), image.pixels);
  stbi_image_free(pixels);
  io::RgbImage broken(2, 3);
  broken.pixels.pop_back();
  expect_error_naming<ArgumentError>([&] { io::write_png_rgb(path, broken); },
                                     "write_png_rgb image");
  expect_error_naming<ArgumentError>([&] { io::write_png_rgb(path, io::RgbImage()); },
                                     "write_png_rgb image");
  expect_error_naming<IoError>([&] { io::write_png_rgb("/nonexistent-dir/x.png", image); },
                               "/nonexistent-dir/x.png");
}

TEST(Png, BadArgumentsAndPathsAreErrors) {
  const Matrix<float> image = Matrix<float>::Zero(2, 2);
  expect_error_naming<ArgumentError>([&] { io::write_png_gray("x.png", image, 0); }, "scale");
  expect_error_naming<IoError>([&] { io::write_png_gray("/nonexistent-dir/x.png", image); },
                               "/nonexistent-dir/x.png");
  expect_error_naming<IoError>([&] { io::read_png_gray("/nonexistent-dir/x.png"); },
                               "/nonexistent-dir/x.png");
  io::PngReadOptions options;
  options.max_pixels = 0;
  expect_error_naming<ArgumentError>(
      [&] { io::decode_png_gray(png_image(3, 8, 0, k_png_gray_rows), "t.png", options); },
      "PngReadOptions::max_pixels");
}

TEST(Png, ReadsWhatItWrites) {
  const std::string path = png_temp_path("round_trip.png");
  Matrix<double> intensity(2, 3);
  intensity << 0.0, 0.5, 1.0, 0.3, 0.7, 0.25;
  io::write_png_gray(path, intensity);
  const Matrix<double> read = io::read_png_gray(path);
  std::filesystem::remove(path);
  EXPECT_EQ(read, ((intensity * 255.0).array().round() / 255.0).matrix());
}

TEST(Png, GrayIsSampleOverFullScale) {
  Matrix<double> eight(2, 3);
  eight << 0, 128, 255, 64, 1, 200;
  EXPECT_EQ(io::decode_png_gray(png_image(3, 8, 0, k_png_gray_rows), "t.png"), eight / 255.0);
  // 16-bit samples are big-endian.
  const std::vector<std::string> rows16 = {std::string("\x00\x00\xff\xff\x03\xe8", 6)};
  Matrix<double> sixteen(1, 3);
  sixteen << 0, 65535, 1000;
  EXPECT_EQ(io::decode_png_gray(png_image(3, 16, 0, rows16), "t.png"), sixteen / 65535.0);
  // 1-bit samples are 0 or 1; gray + alpha ignores the alpha.
  Matrix<double> bits(1, 9);
  bits << 1, 0, 1, 1, 0, 0, 0, 0, 1;
  EXPECT_EQ(io::decode_png_gray(png_image(9, 1, 0, {std::string("\xb0\x80", 2)}), "t.png"), bits);
  const std::vector<std::string> gray_alpha = {std::string("\x10\x00\x20\xff", 4)};
  Matrix<double> without_alpha(1, 2);
  without_alpha << 16, 32;
  EXPECT_EQ(io::decode_png_gray(png_image(2, 8, 4, gray_alpha), "t.png"), without_alpha / 255.0);
}

// An IDAT chunk without data is legal, wherever it stands; stb_image would copy its 0 bytes
// from a null pointer (found by the PNG fuzzer, fuzz/corpus_png/empty_idat_first.png), so the
// reader leaves such chunks out. The image is the same.
TEST(Png, EmptyImageDataChunksChangeNothing) {
  const Matrix<double> expected = io::decode_png_gray(png_image(3, 8, 0, k_png_gray_rows), "t.png");
  const std::string with_empty_first = png_image(3, 8, 0, k_png_gray_rows, png_chunk("IDAT", ""));
  EXPECT_EQ(io::decode_png_gray(with_empty_first, "t.png"), expected);
  std::string with_empty_after = png_image(3, 8, 0, k_png_gray_rows);
  with_empty_after.insert(with_empty_after.size() - 12, png_chunk("IDAT", ""));  // before IEND
  EXPECT_EQ(io::decode_png_gray(with_empty_after, "t.png"), expected);
}

TEST(Png, ColourIsBt709LumaAndAlphaIsIgnored) {
  const Matrix<double> rgb = io::decode_png_gray(
      png_image(2, 8, 2, {std::string("\x0a\x14\x1e\xff\x00\x80", 6)}), "t.png");
  ASSERT_EQ(rgb.rows(), 1);
  ASSERT_EQ(rgb.cols(), 2);
  EXPECT_EQ(rgb(0, 0), png_luma(10, 20, 30, 255));
  EXPECT_EQ(rgb(0, 1), png_luma(255, 0, 128, 255));
  const std::string rgba_row("\x0a\x14\x1e\x00\xff\x00\x80\x33", 8);
  EXPECT_EQ(io::decode_png_gray(png_image(2, 8, 6, {rgba_row}), "t.png"), rgb);
  const Matrix<double> rgb16 = io::decode_png_gray(
      png_image(1, 16, 2, {std::string("\x01\x00\x00\x02\xff\xff", 6)}), "t.png");
  EXPECT_EQ(rgb16(0, 0), png_luma(256, 2, 65535, 65535));
  // Palette entries 0 and 1, 8-bit indices.
  const std::string palette = png_chunk("PLTE", std::string("\x0a\x14\x1e\xff\x00\x80", 6));
  EXPECT_EQ(io::decode_png_gray(png_image(2, 8, 3, {std::string("\x00\x01", 2)}, palette), "t.png"),
            rgb);
  // White stays at 1 (the rounded weights sum to a little more).
  EXPECT_EQ(io::decode_png_gray(png_image(1, 8, 2, {"\xff\xff\xff"}), "t.png")(0, 0), 1.0);
}

TEST(Png, InterlacedEqualsNonInterlaced) {
  // Adam7 on 2 x 2: pass 1 holds (0, 0), pass 6 (0, 1), pass 7 row 1; each row has filter 0.
  const std::string passes("\x00\x0a\x00\x14\x00\x1e\x28", 7);
  const std::string interlaced = png_file(png_ihdr(2, 2, 8, 0, 1), png_zlib(passes));
  const std::string plain = png_image(2, 8, 0, {"\x0a\x14", "\x1e\x28"});
  EXPECT_EQ(io::decode_png_gray(interlaced, "t.png"), io::decode_png_gray(plain, "t.png"));
}

TEST(Png, ClaimedSizeBeyondThePixelLimitIsRejectedBeforeDecoding) {
  // 8000 x 8000 gray would inflate to 64 MB; a file of a few dozen bytes can claim it.
  const std::string bomb = png_file(png_ihdr(8000, 8000, 8, 0), png_zlib(std::string(8001, '\0')));
  expect_png_error(bomb,
                   "8000 x 8000 = 64000000 pixels exceeds the limit of 33554432 "
                   "(PngReadOptions::max_pixels)");
  const std::string small = png_image(3, 8, 0, k_png_gray_rows);
  io::PngReadOptions options;
  options.max_pixels = 5;
  expect_png_error(small, "3 x 2 = 6 pixels exceeds the limit of 5", options);
  options.max_pixels = 6;
  EXPECT_EQ(io::decode_png_gray(small, "t.png", options).size(), 6);
}

TEST(Png, ClaimedSizeBeyondWhatTheDataCanInflateToIsRejected) {
  // 4000 x 4000 is within the pixel limit, but 16004000 bytes of rows cannot come from 20.
  const std::string lie = png_file(png_ihdr(4000, 4000, 8, 0), png_zlib(std::string(16, '\0')));
  expect_png_error(lie, "4000 x 4000 pixels need 16004000 bytes of rows");
  expect_png_error(lie, "1032:1");
  const std::string no_data =
      std::string(io::detail::k_png_signature) + png_ihdr(1, 1, 8, 0) + png_chunk("IEND", "");
  expect_png_error(no_data, "its 0 bytes of image data");
}

TEST(Png, DataInflatingPastTheHeaderIsRejected) {
  // A 1 x 1 image whose IDAT inflates to 4 MiB: stb_image would grow its buffer to hold it all.
  const std::string bomb = png_file(png_ihdr(1, 1, 8, 0), png_zlib(std::string(1 << 22, '\0')));
  expect_png_error(bomb, "inflates past what a 1 x 1 image needs");
}

TEST(Png, TruncatedAtEveryByteSaysTruncated) {
  const std::string whole =
      png_image(3, 8, 0, k_png_gray_rows, png_chunk("tEXt", std::string("a\0b", 3)));
  ASSERT_EQ(io::decode_png_gray(whole, "t.png").size(), 6);
  for (std::size_t size = 1; size < whole.size(); ++size) {
    SCOPED_TRACE(size);
    expect_png_error(whole.substr(0, size), "truncated");
  }
  // A chunk length larger than PNG allows is corrupt rather than cut short.
  std::string huge = whole;
  huge.replace(8, 4, png_be32(0x80000000u));
  expect_png_error(huge, "claims 2147483648 bytes, more than PNG's maximum 2147483647");
}

TEST(Png, EmptyAndOtherFormatsAreNamed) {
  expect_png_error("", "empty (0 bytes)");
  expect_png_error("GIF89a\x01\x00\x01\x00", "not a PNG image");
  expect_png_error("\x89PNG\r\n\x1a\x0b", "not a PNG image");
  const std::string path = png_temp_path("empty.png");
  std::ofstream{path};
  expect_error_naming<IoError>([&] { io::read_png_gray(path); }, "png '" + path + "': empty");
  std::filesystem::remove(path);
  expect_error_naming<IoError>([] { io::read_png_gray("/dev/zero"); }, "not a PNG image");
}

TEST(Png, CorruptChunksAreNamed) {
  const std::string good = png_image(3, 8, 0, k_png_gray_rows);
  std::string bad_crc = good;
  bad_crc[bad_crc.size() - 13] ^= 1;  // the last byte of IDAT's CRC
  expect_png_error(bad_crc, "chunk 'IDAT' at byte 33 fails its CRC check");
  io::PngReadOptions unchecked;
  unchecked.check_crc = false;
  EXPECT_EQ(io::decode_png_gray(bad_crc, "t.png", unchecked), io::decode_png_gray(good, "t.png"));

  const std::string ihdr = png_ihdr(3, 2, 8, 0);
  const std::string signature = io::detail::k_png_signature;
  expect_png_error(signature + png_chunk("IDAT", "") + ihdr, "the first chunk is 'IDAT'");
  expect_png_error(signature + png_chunk("IHDR", std::string(12, '\1')), "IHDR holds 12 bytes");
  expect_png_error(png_file(png_ihdr(0, 2, 8, 0), ""), "width 0 is outside the range");
  expect_png_error(png_file(png_ihdr(3, 1u << 25, 8, 0), ""), "height 33554432 is outside");
  expect_png_error(png_file(png_ihdr(3, 2, 16, 3), ""),
                   "colour type 3 with bit depth 16 is not a PNG format");
  expect_png_error(png_file(png_ihdr(3, 2, 8, 5), ""), "colour type 5");
  // What only stb_image sees is in parentheses: a broken zlib stream, a palette image without
  // its palette.
  expect_png_error(png_file(ihdr, "\x78\x9c\xff\xff\xff" + std::string(8, '\0')),
                   "cannot decode it (stb_image");
  expect_png_error(png_image(3, 8, 3, {std::string(3, '\0'), std::string(3, '\0')}),
                   "cannot decode it (stb_image: no PLTE)");
}

}  // namespace
}  // namespace attnlens
