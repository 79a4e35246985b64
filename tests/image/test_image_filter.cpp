// ImageFilter: every classical filter computed by the attention engine equals the same
// formula computed with plain loops (tests/support/direct_filters.hpp), with and without
// boosting; and the image-quality measures on cases with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "attnlens/image/image_filter.hpp"
#include "attnlens/image/image_quality.hpp"
#include "support/compare.hpp"
#include "support/direct_filters.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::DirectFilter;

ImageFilterOptions library_options(const DirectFilter& f) {
  ImageFilterOptions o;
  o.method = f.method == "gaussian"    ? ImageFilterMethod::gaussian
             : f.method == "bilateral" ? ImageFilterMethod::bilateral
             : f.method == "nlm"       ? ImageFilterMethod::nlm
                                       : ImageFilterMethod::attention;
  o.sigma_space = f.sigma_space;
  if (f.sigma_range > 0) o.sigma_range = f.sigma_range;
  if (f.h > 0) o.h = f.h;
  if (f.temperature > 0) o.temperature = f.temperature;
  o.patch_radius = f.patch_radius;
  o.radius = f.radius;
  o.boost = f.boost;
  return o;
}

const DirectFilter k_filters[] = {
    {"gaussian", 1.3, 0, 0, 0, 0, 3, 0},     {"bilateral", 2.0, 0.15, 0, 0, 0, 3, 0},
    {"nlm", 0, 0, 0.12, 0, 2, 3, 0},         {"attention", 0, 0, 0, 0.05, 1, 2, 0},
    {"attention", 1.5, 0, 0, 0.05, 1, 3, 0},  // bilateral attention
};

TEST(ImageFilter, EqualsDirectLoopsWithAndWithoutBoosting) {
  const Matrix<double> y = testing::test_picture(13, 17, 3);
  for (DirectFilter f : k_filters)
    for (int boost : {0, 1, 3}) {
      f.boost = boost;
      SCOPED_TRACE(::testing::Message()
                   << f.method << " sigma_space " << f.sigma_space << " boost " << boost);
      const Matrix<double> expected = testing::direct_filter(y, f);
      ImageFilterOptions options = library_options(f);
      const ImageFilter<double> filter(y, options);
      ATTNLENS_EXPECT_CLOSE(filter.run_reference(), expected, 1e-10);
      for (Index tile : {1, 5, 64})
        for (int threads : {1, 2}) {
          options.fused = {{tile, 7}, {threads}};
          ATTNLENS_EXPECT_CLOSE(filter_image<double>(y, options), expected, 1e-10);
        }
      options.fused = {};
      const Matrix<float> y_float = y.cast<float>();
      ATTNLENS_EXPECT_CLOSE(filter_image<float>(y_float, options).cast<double>(), expected, 1e-5);
    }
}

TEST(ImageFilter, BoostingIsAPolynomialInTheSmoother) {
  const Matrix<double> y = testing::test_picture(9, 11, 4);
  ImageFilterOptions options = library_options(k_filters[2]);
  options.boost = 2;
  const ImageFilter<double> filter(y, options);
  Matrix<double> A;
  const Matrix<double> boosted = filter.run_reference(&A);
  // [I - (I - A)^3] y
  const Index L = A.rows();
  const Matrix<double> I_A = Matrix<double>::Identity(L, L) - A;
  const Vector<double> yv = Eigen::Map<const Vector<double>>(y.data(), L);
  const Vector<double> expected = yv - I_A * (I_A * (I_A * yv));
  ATTNLENS_EXPECT_CLOSE(Eigen::Map<const Vector<double>>(boosted.data(), L), expected, 1e-12);
  // Rows of A are stochastic and vanish outside the 7 x 7 window.
  ATTNLENS_EXPECT_CLOSE(A.rowwise().sum(), Vector<double>::Ones(L), 1e-12);
  EXPECT_EQ(A(0, 4 * 11 + 4), 0.0);
  EXPECT_GT(A(0, 3 * 11 + 3), 0.0);
}

TEST(ImageFilter, LimitsOfTheKernels) {
  const Matrix<double> y = testing::test_picture(10, 12, 5);
  ImageFilterOptions options;
  options.method = ImageFilterMethod::gaussian;
  options.sigma_space = 2.0;
  options.radius = 0;  // the window holds the pixel itself: identity
  ATTNLENS_EXPECT_CLOSE(filter_image<double>(y, options), y, 1e-15);
  // A bilateral filter tends to the Gaussian filter as its range sigma grows. Its weights are
  // the Gaussian's times r_j = exp(-(y_i - y_j)^2 / (2 s^2)) in [exp(-e), 1], e = R^2 / (2 s^2)
  // with R = max y - min y, so each normalized weight p'_j is within a factor exp(+-e) of the
  // Gaussian's p_j, sum_j |p'_j - p_j| <= expm1(e), and since both sum to 1,
  // |bilateral - gaussian| = |sum_j (p'_j - p_j) (y_j - mid)| <= expm1(e) R / 2. Checked where
  // the range term is small but not zero (s = 10, 100 on pixels in [0, 1]): the difference is
  // nonzero, under the bound, and second order in 1 / s (a hundred times smaller at 10 s).
  options.radius = 4;
  const Matrix<double> gaussian = filter_image<double>(y, options);
  options.method = ImageFilterMethod::bilateral;
  const double R = y.maxCoeff() - y.minCoeff();
  ASSERT_GT(R, 0.5);
  double change[2];
  const double sigmas[2] = {10, 100};
  for (int n = 0; n < 2; ++n) {
    options.sigma_range = sigmas[n];
    const double e = R * R / (2 * sigmas[n] * sigmas[n]);
    const Matrix<double> bilateral = filter_image<double>(y, options);
    ATTNLENS_EXPECT_CLOSE(bilateral, gaussian, std::expm1(e) * R / 2) << "sigma " << sigmas[n];
    change[n] = testing::max_abs_error(bilateral, gaussian);
    EXPECT_GT(change[n], 0.0) << "sigma " << sigmas[n];
  }
  EXPECT_NEAR(change[1] / change[0], 0.01, 0.001);
  // Default radius ceil(3 sigma).
  options.radius = -1;
  options.sigma_space = 1.2;
  EXPECT_EQ(image_filter_radius(options), 4);
}

TEST(ImageFilter, PatchesReflectLikeNumpy) {
  // numpy.pad([1, 2, 3, 4, 5], (2, 3), 'reflect') == [3, 2, 1, 2, 3, 4, 5, 4, 3, 2]
  const int expected[] = {3, 2, 1, 2, 3, 4, 5, 4, 3, 2};
  for (Index i = -2; i < 8; ++i) EXPECT_EQ(reflect_index(i, 5) + 1, expected[i + 2]) << i;
  for (Index i = -9; i < 12; ++i) EXPECT_EQ(reflect_index(i, 3), testing::numpy_reflect(int(i), 3));
  EXPECT_EQ(reflect_index(-4, 1), 0);
  Matrix<double> image(2, 3);
  image << 1, 2, 3, 4, 5, 6;
  const Matrix<double> patches = image_patches<double>(image, 1);
  ASSERT_EQ(patches.rows(), 6);
  ASSERT_EQ(patches.cols(), 9);
  // Around (0, 0): rows -1, 0, 1 -> 1, 0, 1; cols -1, 0, 1 -> 1, 0, 1.
  RowVector<double> corner(9);
  corner << 5, 4, 5, 2, 1, 2, 5, 4, 5;
  EXPECT_EQ(patches.row(0), corner);
}

TEST(ImageFilter, RejectsBadOptionsAndImages) {
  const Matrix<double> y = testing::test_picture(6, 6, 6);
  const auto rejects = [&](ImageFilterOptions o, const char* word) {
    try {
      ImageFilter<double> filter(y, o);
      ADD_FAILURE() << "accepted options, expected an error naming " << word;
    } catch (const ArgumentError& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  ImageFilterOptions o;
  o.method = ImageFilterMethod::gaussian;
  rejects(o, "sigma_space");  // gaussian needs one
  o.sigma_space = -1;
  rejects(o, "sigma_space");
  o.method = ImageFilterMethod::bilateral;
  o.sigma_space = 1;
  o.sigma_range = 0;
  rejects(o, "sigma_range");
  o.method = ImageFilterMethod::nlm;
  o.sigma_space = 0;
  o.radius = 2;
  o.h = -0.1;
  rejects(o, "h");
  o.h = 0.1;
  o.radius = -1;
  rejects(o, "radius");  // no radius and no sigma for the default
  o.method = ImageFilterMethod::attention;
  o.radius = 2;
  o.temperature = 0;
  rejects(o, "temperature");
  o.temperature = 0.1;
  o.boost = -1;
  rejects(o, "boost");
  o.boost = 0;
  o.patch_radius = -2;
  rejects(o, "patch_radius");
  o.patch_radius = 1;
  Matrix<double> bad = y;
  bad(2, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(ImageFilter<double>(bad, o), ArgumentError);
  EXPECT_THROW(ImageFilter<double>(Matrix<double>(0, 4), o), ArgumentError);
}

TEST(ImageFilter, ExtremeParametersGiveTheirLimits) {
  const Matrix<double> y = testing::test_picture(9, 11, 4);  // no two pixels or patches equal
  const auto run = [&](ImageFilterMethod method, auto&& set) {
    ImageFilterOptions o;
    o.method = method;
    o.radius = 3;
    o.patch_radius = 1;
    set(o);
    return filter_image<double>(y, o);
  };
  // A bandwidth so small that 1 / h^2 overflows: only the pixel itself weighs (NaN scores
  // once made every row "masked" and the image black).
  for (const double tiny : {1e-160, 1e-300}) {
    SCOPED_TRACE(tiny);
    const Matrix<double> nlm = run(ImageFilterMethod::nlm, [&](auto& o) { o.h = tiny; });
    ATTNLENS_EXPECT_CLOSE(nlm, y, 1e-15);
    const Matrix<double> bilateral = run(ImageFilterMethod::bilateral, [&](auto& o) {
      o.sigma_space = 2;
      o.sigma_range = tiny;
    });
    ATTNLENS_EXPECT_CLOSE(bilateral, y, 1e-15);
    ImageFilterOptions o;
    o.method = ImageFilterMethod::nlm;
    o.radius = 3;
    o.h = tiny;
    const Matrix<float> y_float = y.cast<float>();
    ATTNLENS_EXPECT_CLOSE(filter_image<float>(y_float, o), y_float, 1e-7);
  }
  // A bandwidth so large that 1 / h^2 underflows to 0: every key in the window weighs the
  // same, the box filter (gaussian with a huge sigma_space).
  const Matrix<double> box =
      run(ImageFilterMethod::gaussian, [](auto& o) { o.sigma_space = 1e200; });
  ATTNLENS_EXPECT_CLOSE(run(ImageFilterMethod::nlm, [](auto& o) { o.h = 1e200; }), box, 1e-15);
  // An infinite window is the whole image: radius INT64_MAX and sigma_space 1e300 (whose
  // ceil(3 s) does not fit an Index) give the global mean, as radius 11 does.
  const Matrix<double> global = Matrix<double>::Constant(9, 11, y.mean());
  for (const Index radius : {Index(11), std::numeric_limits<Index>::max(), Index(-1)}) {
    SCOPED_TRACE(radius);
    const Matrix<double> out = run(ImageFilterMethod::gaussian, [&](auto& o) {
      o.sigma_space = 1e300;
      o.radius = radius;
    });
    ATTNLENS_EXPECT_CLOSE(out, global, 1e-15);
  }
  // Tiles larger than the image are the image.
  const Matrix<double> nlm = run(ImageFilterMethod::nlm, [](auto&) {});
  const Matrix<double> huge_tiles = run(ImageFilterMethod::nlm, [](auto& o) {
    o.fused.tiling = {std::numeric_limits<Index>::max(), std::numeric_limits<Index>::max()};
  });
  ATTNLENS_EXPECT_CLOSE(huge_tiles, nlm, 1e-15);
}

TEST(ImageFilter, SizesFromOptionsAreBoundedBeforeAllocation) {
  const Matrix<double> y = testing::test_picture(6, 8, 6);
  const auto rejects = [&](ImageFilterOptions o, const char* word) {
    testing::expect_error_naming<ArgumentError>([&] { ImageFilter<double> filter(y, o); }, word);
  };
  ImageFilterOptions o;
  o.method = ImageFilterMethod::nlm;
  o.radius = 2;
  o.patch_radius = 5;
  EXPECT_NO_THROW(ImageFilter<double>(y, o));
  for (const Index radius :
       {Index(6), Index(1000), Index(1) << 62, std::numeric_limits<Index>::max()}) {
    o.patch_radius = radius;
    rejects(o, "patch_radius: expected < 6 (the image's smaller side)");
  }
  o.patch_radius = 1;
  o.boost = k_max_boost + 1;
  rejects(o, "boost: expected <= 100");
  o.boost = 0;
  // A temperature so small that scale * P_i.P_j overflows (in float) is an error, not NaN
  // scores; one just above the bound runs and stays finite.
  o.method = ImageFilterMethod::attention;
  o.temperature = 1e-300;
  const Matrix<float> y_float = y.cast<float>();
  testing::expect_error_naming<ArgumentError>([&] { ImageFilter<float> filter(y_float, o); },
                                              "temperature: expected >=");
  o.temperature = 1e-36;
  EXPECT_TRUE(filter_image<float>(y_float, o).allFinite());
  testing::expect_error_naming<ArgumentError>(
      [&] { image_patches<double>(y, std::numeric_limits<Index>::max()); }, "patch radius");
}

TEST(ImageQuality, PsnrOfAConstantOffset) {
  const Matrix<double> x = testing::test_picture(16, 20, 7);
  const Matrix<double> shifted = x.array() + 0.05;
  EXPECT_NEAR(psnr<double>(x, shifted), -20.0 * std::log10(0.05), 1e-9);  // 26.0206 dB
  EXPECT_NEAR(psnr<double>(x, shifted, 255.0), 20.0 * std::log10(255.0 / 0.05), 1e-9);
  EXPECT_EQ(psnr<double>(x, x), std::numeric_limits<double>::infinity());
  EXPECT_THROW(psnr<double>(x, x.topRows(3)), ShapeError);
}

TEST(ImageQuality, SsimKnownCases) {
  const Matrix<double> x = testing::test_picture(24, 30, 8);
  EXPECT_NEAR(ssim<double>(x, x), 1.0, 1e-12);
  // Constant images a, b: the contrast-structure factor is C2 / C2 and the map is constant.
  const double a = 0.3, b = 0.5, c1 = 1e-4;
  const Matrix<double> A = Matrix<double>::Constant(20, 20, a),
                       B = Matrix<double>::Constant(20, 20, b);
  EXPECT_NEAR(ssim<double>(A, B), (2 * a * b + c1) / (a * a + b * b + c1), 1e-12);
  // A brightness shift keeps structure: only the luminance term drops, and only a little.
  const Matrix<double> shifted = x.array() + 0.05;
  const double s = ssim<double>(x, shifted);
  EXPECT_LT(s, 1.0);
  EXPECT_GT(s, 0.95);
  // Symmetric; noise lowers it.
  Rng rng(9);
  Matrix<double> noisy = x;
  for (Index p = 0; p < noisy.size(); ++p) noisy.data()[p] += rng.normal<double>(0.0, 0.1);
  EXPECT_NEAR(ssim<double>(x, noisy), ssim<double>(noisy, x), 1e-12);
  EXPECT_LT(ssim<double>(x, noisy), 0.8);
  // Negated structure gives a negative SSIM.
  const Matrix<double> inverted = 1.0 - x.array();
  EXPECT_LT(ssim<double>(x, inverted), 0.0);
  EXPECT_THROW(ssim<double>(x.topLeftCorner(10, 10), x.topLeftCorner(10, 10)), ArgumentError);
}

}  // namespace
}  // namespace attnlens
