// write_png_gray: the picture read back with stb_image holds the intensities, scaled up.
#include <gtest/gtest.h>

#include <filesystem>

#include "attnlens/io/png.hpp"  // and stb_image, to read PNG files independently

#include "support/score_terms.hpp"

namespace attnlens {
namespace {

TEST(Png, WritesGrayIntensitiesScaledUp) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "attnlens_test_png.png").string();
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

TEST(Png, BadArgumentsAndPathsAreErrors) {
  const Matrix<float> image = Matrix<float>::Zero(2, 2);
  testing::expect_error_naming<ArgumentError>([&] { io::write_png_gray("x.png", image, 0); },
                                              "scale");
  testing::expect_error_naming<IoError>(
      [&] { io::write_png_gray("/nonexistent-dir/x.png", image); }, "/nonexistent-dir/x.png");
}

}  // namespace
}  // namespace attnlens
