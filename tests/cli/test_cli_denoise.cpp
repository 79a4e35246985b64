// `attnlens denoise` run as a user runs it: its float32 output equals the filter computed with
// plain loops (tests/support/direct_filters.hpp) to 1e-6, with and without --boost; its PNG
// output, quality report, noise and bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "attnlens/image/image_quality.hpp"
#include "attnlens/io/png.hpp"  // and stb_image, to read the tool's PNG output
#include "attnlens/io/safetensors.hpp"
#include "support/cli_test.hpp"
#include "support/direct_filters.hpp"
#include "support/png_files.hpp"
namespace attnlens {
namespace {

using testing::CliRun;
using testing::DirectFilter;
using testing::run_cli;

class CliDenoise : public testing::CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    if (IsSkipped()) return;
    picture_ = testing::test_picture(14, 19, 11);
    io::write_png_gray(input(), picture_);
  }
  std::string input() const { return path("in.png"); }

  static std::string arguments(const DirectFilter& f) {
    std::string a = " --method " + f.method + " --radius " + std::to_string(f.radius);
    if (f.sigma_space > 0) a += " --sigma-space " + std::to_string(f.sigma_space);
    if (f.method == "bilateral") a += " --sigma-range " + std::to_string(f.sigma_range);
    if (f.method == "nlm") a += " --h " + std::to_string(f.h);
    if (f.method == "attention") a += " --temperature " + std::to_string(f.temperature);
    if (f.method == "nlm" || f.method == "attention")
      a += " --patch-radius " + std::to_string(f.patch_radius);
    if (f.boost) a += " --boost " + std::to_string(f.boost);
    return a;
  }

  Matrix<double> run_to_safetensors(const std::string& args) const {
    const CliRun run = run_cli("denoise --input " + input() + args + " --output " + out_path());
    EXPECT_EQ(run.exit_code, 0) << run.output;
    const auto file = io::SafeTensors::load(out_path());
    EXPECT_EQ(file.info("image").dtype, io::DType::F32);
    const Tensor<float> image = file.get<float>("image");
    EXPECT_EQ(image.shape(), (Shape{picture_.rows(), picture_.cols()}));
    return Eigen::Map<const Matrix<float>>(image.data(), picture_.rows(), picture_.cols())
        .cast<double>();
  }

  Matrix<double> picture_;
};

TEST_F(CliDenoise, EqualsDirectLoopsWithAndWithoutBoost) {
  // Values printed with std::to_string keep 6 decimals: choose parameters it writes exactly.
  const DirectFilter filters[] = {
      {"gaussian", 1.5, 0, 0, 0, 0, 3, 0},
      {"bilateral", 2.0, 0.125, 0, 0, 0, 4, 0},
      {"nlm", 0, 0, 0.125, 0, 2, 3, 0},
      {"attention", 1.25, 0, 0, 0.0625, 1, 3, 0},
  };
  for (DirectFilter f : filters)
    for (int boost : {0, 1, 2}) {
      f.boost = boost;
      SCOPED_TRACE(arguments(f));
      const Matrix<double> expected = testing::direct_filter(picture_, f);
      ATTNLENS_EXPECT_CLOSE(run_to_safetensors(arguments(f) + " --threads 2"), expected, 1e-6);
      // The test can fail: boosting changes the output by much more than the tolerance.
      if (boost == 1) {
        DirectFilter plain = f;
        plain.boost = 0;
        EXPECT_GT(testing::max_abs_error(testing::direct_filter(picture_, plain), expected), 1e-3);
      }
    }
}

TEST_F(CliDenoise, PngOutputIsRoundedAndClipped) {
  const DirectFilter f{"bilateral", 1.5, 0.25, 0, 0, 0, 3, 3};
  const Matrix<double> expected = testing::direct_filter(picture_, f);
  const std::string png = path("out.png");
  const CliRun run = run_cli("denoise --input " + input() + arguments(f) + " --output " + png);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  int width = 0, height = 0, channels = 0;
  unsigned char* pixels = stbi_load(png.c_str(), &width, &height, &channels, 0);
  ASSERT_NE(pixels, nullptr);
  ASSERT_EQ(height, picture_.rows());
  ASSERT_EQ(width, picture_.cols());
  ASSERT_EQ(channels, 1);
  for (Index p = 0; p < expected.size(); ++p) {
    const double v = std::clamp(expected.data()[p], 0.0, 1.0) * 255.0;
    // A value within float rounding of a .5 may go either way.
    if (std::abs(v - std::floor(v) - 0.5) > 1e-4) {
      EXPECT_EQ(pixels[p], std::lround(v)) << p;
    }
  }
  stbi_image_free(pixels);
}

TEST_F(CliDenoise, PrintsQualityAgainstTheCleanImage) {
  const std::string clean = path("clean.png");
  io::write_png_gray(clean, Matrix<double>::Constant(picture_.rows(), picture_.cols(), 0.4));
  const DirectFilter f{"gaussian", 1.0, 0, 0, 0, 0, 3, 0};
  const CliRun run = run_cli("denoise --input " + input() + arguments(f) + " --output " +
                             out_path() + " --clean " + clean);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  Matrix<double> reference = Matrix<double>::Constant(picture_.rows(), picture_.cols(), 0.4);
  reference = (reference * 255.0).array().round() / 255.0;
  const Matrix<double> output = testing::direct_filter(picture_, f);
  for (const auto& [label, image] :
       {std::pair{"input:  PSNR ", static_cast<const Matrix<double>*>(&picture_)},
        std::pair{"output: PSNR ", &output}}) {
    const auto at = run.output.find(label);
    ASSERT_NE(at, std::string::npos) << run.output;
    EXPECT_NEAR(std::stod(run.output.substr(at + std::string(label).size())),
                psnr<double>(reference, *image), 0.006)
        << run.output;
    // SSIM needs 11 x 11 windows: 14 x 19 has some.
    const auto s = run.output.find("SSIM ", at);
    ASSERT_NE(s, std::string::npos) << run.output;
    EXPECT_NEAR(std::stod(run.output.substr(s + 5)), ssim<double>(reference, *image), 6e-5)
        << run.output;
  }
}

TEST_F(CliDenoise, AddNoiseIsSeeded) {
  const std::string args = " --method gaussian --sigma-space 1 --radius 0 --add-noise 25";
  const Matrix<double> a = run_to_safetensors(args + " --seed 7");
  const Matrix<double> b = run_to_safetensors(args + " --seed 7");
  const Matrix<double> c = run_to_safetensors(args + " --seed 8");
  EXPECT_EQ(a, b);
  EXPECT_GT(testing::max_abs_error(a, c), 0.01);
  // Radius 0 is the identity: the output is the noisy input, noise of sigma 25/255.
  const double sd = std::sqrt((a - picture_).squaredNorm() / static_cast<double>(a.size()));
  EXPECT_NEAR(sd, 25.0 / 255.0, 0.01);
  const CliRun run = run_cli("denoise --input " + input() + args + " --output " + out_path());
  EXPECT_NE(run.output.find("input:  PSNR"), std::string::npos) << run.output;
}

TEST_F(CliDenoise, PngBombIsOneLineAndExitCodeTwo) {
  const std::string bomb = path("bomb.png");
  std::ofstream(bomb, std::ios::binary) << testing::png_file(
      testing::png_ihdr(8000, 8000, 8, 0), testing::png_zlib(std::string(8001, '\0')));
  expect_bad_input("denoise --input " + bomb + " --method nlm --radius 2 --output " + out_path(),
                   "8000 x 8000 = 64000000 pixels exceeds the limit of 33554432");
}

TEST_F(CliDenoise, BadInputIsOneLineAndExitCodeTwo) {
  const std::string out = " --output " + out_path();
  const std::string in = "denoise --input " + input();
  expect_bad_input("denoise --input " + path("missing.png") + " --method nlm --radius 2" + out,
                   "missing.png");
  { std::ofstream(path("text.png")) << "not a picture"; }
  expect_bad_input("denoise --input " + path("text.png") + " --method nlm --radius 2" + out,
                   "text.png");
  expect_bad_input(in + " --method median --radius 2" + out, "--method");
  expect_bad_input(in + " --method gaussian --sigma-space 0" + out, "--sigma-space");
  expect_bad_input(in + " --method gaussian --sigma-space -2" + out, "--sigma-space");
  expect_bad_input(in + " --method gaussian" + out, "--sigma-space");
  expect_bad_input(in + " --method bilateral --sigma-space 1 --sigma-range 0" + out,
                   "--sigma-range");
  expect_bad_input(in + " --method nlm --radius 2 --h 0" + out, "--h");
  expect_bad_input(in + " --method nlm --radius 2 --sigma-range 0.1" + out, "--sigma-range");
  expect_bad_input(in + " --method nlm" + out, "--radius");
  expect_bad_input(in + " --method attention --radius 2 --temperature -1" + out, "--temperature");
  expect_bad_input(in + " --method nlm --radius 2 --boost -1" + out, "--boost");
  expect_bad_input(in + " --method nlm --radius 2 --output " + path("out.jpg"), "out.jpg");
  expect_bad_input(in + " --method nlm --radius 2 --clean " + path("none.png") + out, "none.png");
  const std::string small = path("small.png");
  io::write_png_gray(small, Matrix<double>::Constant(4, 4, 0.5));
  expect_bad_input(in + " --method nlm --radius 2 --clean " + small + out, "--clean");
  expect_bad_input(in + " --method nlm --radius 2 --seed 3" + out, "--seed");
  // --help is not an error.
  const CliRun help = run_cli("denoise --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--sigma-space"), std::string::npos);
}

}  // namespace
}  // namespace attnlens
