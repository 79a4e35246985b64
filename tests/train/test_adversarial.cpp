// Perturbations of a classifier's input (train/adversarial.hpp) on a tiny ViT over 8 x 8 images
// whose class is the bright quadrant: FGSM at epsilon 0 is the clean evaluation exactly; the
// attacks stay in the epsilon ball and in [0, 1]; the pixel gradient (through the per-channel
// normalization) agrees with central differences in double; on a trained model FGSM raises the
// loss and PGD raises it more; the noise is seeded per image and has the asked standard
// deviation; bad options are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attnlens/train/adamw.hpp"
#include "attnlens/train/adversarial.hpp"
#include "support/expect_error.hpp"
#include "support/gradient_check.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// `count` images of `channels` x 8 x 8 pixels in [0, 1]: a dim background in [0, 0.5) and a
// bright 4 x 4 quadrant (+0.5) whose index is the label; every image's first pixel is 0 and its
// last 1, so that the clamping to [0, 1] has work to do.
template <class T>
ImageDataset<T> quadrant_pixels(Index count, std::uint64_t seed, Index channels = 1) {
  ImageDataset<T> data;
  data.images = Tensor<T>({count, channels, 8, 8});
  PortableRng rng(seed);
  for (Index n = 0; n < count; ++n) {
    const Index label = static_cast<Index>(rng.below(4));
    data.labels.push_back(label);
    T* image = data.images.data() + n * channels * 64;
    for (Index c = 0; c < channels; ++c)
      for (Index y = 0; y < 8; ++y)
        for (Index x = 0; x < 8; ++x) {
          const bool bright = (y / 4) * 2 + (x / 4) == label;
          image[(c * 8 + y) * 8 + x] = static_cast<T>(0.5 * rng.uniform() + (bright ? 0.5 : 0.0));
        }
    image[0] = T(0);
    image[channels * 64 - 1] = T(1);
  }
  data.class_names = {"top left", "top right", "bottom left", "bottom right"};
  return data;
}

VisionTransformerOptions attack_vit(Index channels = 1) {
  VisionTransformerOptions o;
  o.image_height = o.image_width = 8;
  o.patch_size = 4;
  o.in_chans = channels;
  o.num_classes = 4;
  o.encoder.layer = {16, 2, 32, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 1;
  o.encoder.final_norm = true;
  return o;
}

const ImageNormalization k_attack_normalization{{0.3}, {0.35}};

// A float model trained on the task until it is right on most images (a model at its
// initialization has nearly flat logits, where attacks say little).
VisionTransformer<float> trained_attack_vit() {
  ImageDataset<float> train = quadrant_pixels<float>(128, 11);
  normalize_images(train.images, k_attack_normalization);
  Rng rng(12);
  VisionTransformer<float> model(attack_vit(), rng);
  VisionTransformer<float> gradient = zeros_like(model);
  AdamW<float> optimizer(AdamWOptions{});
  ClassifierTrainingOptions options;
  options.batch_size = 16;
  options.seed = 13;
  options.parallel.threads = 1;
  for (Index epoch = 0; epoch < 12; ++epoch) {
    EpochProgress progress;
    train_epoch(
        model, gradient, optimizer, train, options, epoch, progress,
        [](std::int64_t) { return 3e-3; }, [](const EpochProgress&) { return true; });
  }
  return model;
}

double max_abs_difference(const Tensor<float>& a, const Tensor<float>& b) {
  double largest = 0;
  for (Index i = 0; i < a.size(); ++i)
    largest = std::max(largest, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
  return largest;
}

void expect_same_evaluation(const ClassifierEvaluation& a, const ClassifierEvaluation& b) {
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.predictions, b.predictions);
  EXPECT_TRUE(a.confusion == b.confusion);
}

TEST(Adversarial, FgsmAndPgdAtEpsilonZeroAreTheCleanEvaluationExactly) {
  const VisionTransformer<float> model = trained_attack_vit();
  const PixelClassifier<float> classifier{model, k_attack_normalization, {1}};
  const ImageDataset<float> test = quadrant_pixels<float>(40, 21);
  EXPECT_TRUE(perturb_images(classifier, test.images, test.labels,
                             PerturbationOptions::fgsm(0.0)) == test.images);
  const ClassifierEvaluation clean =
      evaluate_perturbed(classifier, test, PerturbationOptions::clean(), 16);
  // The clean condition is evaluate_classifier on the normalized images.
  ImageDataset<float> normalized = test;
  normalize_images(normalized.images, k_attack_normalization);
  expect_same_evaluation(clean, evaluate_classifier(model, normalized, 16, {1}));
  expect_same_evaluation(evaluate_perturbed(classifier, test, PerturbationOptions::fgsm(0.0), 16),
                         clean);
  expect_same_evaluation(
      evaluate_perturbed(classifier, test, PerturbationOptions::pgd(0.0, 3, 0.1), 16), clean);
  EXPECT_GT(clean.accuracy, 0.8);  // the model learned the task: the attacks below mean something
}

TEST(Adversarial, AttacksStayInTheEpsilonBallAndThePixelRange) {
  const VisionTransformer<float> model = trained_attack_vit();
  const PixelClassifier<float> classifier{model, k_attack_normalization, {1}};
  const ImageDataset<float> data = quadrant_pixels<float>(8, 22);
  const double epsilon = 0.1;
  PerturbationOptions random_start = PerturbationOptions::pgd(epsilon, 4);
  random_start.random_start = true;
  random_start.seed = 5;
  for (const PerturbationOptions& options :
       {PerturbationOptions::fgsm(epsilon), PerturbationOptions::pgd(epsilon, 4),
        PerturbationOptions::pgd(epsilon, 3, 0.5 * epsilon), random_start}) {
    SCOPED_TRACE(perturbation_label(options));
    const Tensor<float> attacked = perturb_images(classifier, data.images, data.labels, options);
    ASSERT_EQ(attacked.shape(), data.images.shape());
    // Within epsilon, to the rounding of x +- epsilon in float.
    EXPECT_LE(max_abs_difference(attacked, data.images), epsilon * (1 + 1e-6));
    EXPECT_GE(*std::min_element(attacked.storage().begin(), attacked.storage().end()), 0.0f);
    EXPECT_LE(*std::max_element(attacked.storage().begin(), attacked.storage().end()), 1.0f);
    // The attack moved most pixels by the whole radius (where the range allows it).
    Index at_radius = 0;
    for (Index i = 0; i < attacked.size(); ++i)
      at_radius += std::abs(attacked.data()[i] - data.images.data()[i]) > 0.99 * epsilon;
    EXPECT_GT(at_radius, attacked.size() / 2);
  }
  // PGD of one step of size epsilon from the clean image is FGSM.
  EXPECT_TRUE(
      perturb_images(classifier, data.images, data.labels,
                     PerturbationOptions::pgd(epsilon, 1, epsilon)) ==
      perturb_images(classifier, data.images, data.labels, PerturbationOptions::fgsm(epsilon)));
  // The random start is the seed's: the same seed gives the same images, another seed others.
  random_start.steps = 1;
  const Tensor<float> first = perturb_images(classifier, data.images, data.labels, random_start);
  EXPECT_TRUE(perturb_images(classifier, data.images, data.labels, random_start) == first);
  random_start.seed = 6;
  EXPECT_FALSE(perturb_images(classifier, data.images, data.labels, random_start) == first);
}

TEST(Adversarial, PixelGradientMatchesCentralDifferences) {
  // Two channels with their own mean and std: the chain rule divides channel c by std[c].
  Rng rng(31);
  VisionTransformer<double> model(attack_vit(2), rng);
  testing::perturb_parameters(model, 32);
  const PixelClassifier<double> classifier{model, {{0.3, 0.6}, {0.35, 0.2}}, {1}};
  ImageDataset<double> data = quadrant_pixels<double>(2, 33, 2);
  const PixelLossGradient<double> analytic =
      pixel_loss_gradient(classifier, data.images, data.labels);
  const auto loss = [&] {
    const Tensor<double> input = model_input(classifier, data.images);
    return softmax_cross_entropy<double>(model.forward(input).logits.matrix(), data.labels).loss;
  };
  EXPECT_DOUBLE_EQ(analytic.loss, loss());
  const testing::GradientCheck check = testing::check_gradient(
      loss, data.images.data(), data.images.size(), analytic.gradient.data());
  EXPECT_TRUE(testing::gradient_close("d loss / d pixels", check, 1e-7));
  EXPECT_GT(check.max_numerical, 1e-3);  // not a check of an all-zero gradient
}

TEST(Adversarial, FgsmRaisesTheLossAndPgdRaisesItMore) {
  const VisionTransformer<float> model = trained_attack_vit();
  const PixelClassifier<float> classifier{model, k_attack_normalization, {1}};
  const ImageDataset<float> test = quadrant_pixels<float>(64, 23);
  const double epsilon = 0.1;
  const ClassifierEvaluation clean =
      evaluate_perturbed(classifier, test, PerturbationOptions::clean(), 32);
  const ClassifierEvaluation fgsm =
      evaluate_perturbed(classifier, test, PerturbationOptions::fgsm(epsilon), 32);
  const ClassifierEvaluation pgd =
      evaluate_perturbed(classifier, test, PerturbationOptions::pgd(epsilon, 10), 32);
  // Noise of the same size hurts far less than the attack aimed at the loss.
  const ClassifierEvaluation noise =
      evaluate_perturbed(classifier, test, PerturbationOptions::noise(epsilon, 1), 32);
  EXPECT_GT(fgsm.loss, clean.loss * 1.5) << "clean " << clean.loss << ", fgsm " << fgsm.loss;
  EXPECT_GE(pgd.loss, fgsm.loss);
  EXPECT_LE(fgsm.accuracy, clean.accuracy);
  EXPECT_LE(pgd.accuracy, fgsm.accuracy);
  EXPECT_LT(noise.loss, fgsm.loss);
  // The batch's pixel loss is the clean evaluation's loss on that batch.
  const PixelLossGradient<float> batch = pixel_loss_gradient(classifier, test.images, test.labels);
  EXPECT_NEAR(batch.loss, clean.loss, 1e-6 * clean.loss);
}

TEST(Adversarial, NoiseIsSeededPerImageAndHasTheAskedStandardDeviation) {
  const VisionTransformer<float> model(attack_vit());
  const PixelClassifier<float> classifier{model, k_attack_normalization, {}};
  // Grey images: far (5 sigma) from the clamping at 0 and 1.
  const Index count = 64;
  Tensor<float> grey({count, 1, 8, 8});
  std::fill(grey.storage().begin(), grey.storage().end(), 0.5f);
  const std::vector<Index> labels(static_cast<std::size_t>(count), 0);
  const double sigma = 0.1;
  const Tensor<float> noisy =
      perturb_images(classifier, grey, labels, PerturbationOptions::noise(sigma, 7));
  EXPECT_TRUE(perturb_images(classifier, grey, labels, PerturbationOptions::noise(sigma, 7)) ==
              noisy);
  EXPECT_FALSE(perturb_images(classifier, grey, labels, PerturbationOptions::noise(sigma, 8)) ==
               noisy);
  // Image i has stream i of the seed, whatever batch it is in: the last 24 images perturbed as a
  // batch starting at image 40 get the same noise.
  std::vector<Index> last(24);
  for (Index i = 0; i < 24; ++i) last[static_cast<std::size_t>(i)] = 40 + i;
  const Tensor<float> tail =
      perturb_images(classifier, gather_first_axis(grey, last), std::vector<Index>(24, 0),
                     PerturbationOptions::noise(sigma, 7), 40);
  EXPECT_TRUE(tail == gather_first_axis(noisy, last));

  // 4096 draws: the sample mean within 4 standard errors of 0.5, the standard deviation within
  // 5% (4.5 standard errors), and 68.3% of them within one sigma (not 57.7% as for uniform
  // noise of the same deviation) to 4 standard errors.
  double sum = 0, squares = 0;
  Index within_sigma = 0;
  for (float x : noisy.storage()) {
    const double z = x - 0.5;
    sum += z;
    squares += z * z;
    within_sigma += std::abs(z) < sigma;
  }
  const double n = static_cast<double>(noisy.size());
  const double mean = sum / n, deviation = std::sqrt(squares / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 4 * sigma / std::sqrt(n));
  EXPECT_NEAR(deviation, sigma, 0.05 * sigma);
  EXPECT_NEAR(within_sigma / n, 0.6827, 4 * std::sqrt(0.6827 * 0.3173 / n));
  // Clamped to the pixel range.
  const Tensor<float> loud =
      perturb_images(classifier, grey, labels, PerturbationOptions::noise(1.0, 7));
  EXPECT_EQ(*std::min_element(loud.storage().begin(), loud.storage().end()), 0.0f);
  EXPECT_EQ(*std::max_element(loud.storage().begin(), loud.storage().end()), 1.0f);
}

TEST(Adversarial, ConditionsParseFromText) {
  EXPECT_EQ(parse_pixel_length("0.25", "x"), 0.25);
  EXPECT_EQ(parse_pixel_length("2/255", "x"), 2.0 / 255.0);
  EXPECT_EQ(parse_perturbation("clean", "c").type, PerturbationType::none);
  const PerturbationOptions noise = parse_perturbation("noise:0.1", "c", 9);
  EXPECT_EQ(noise.type, PerturbationType::corruption);
  EXPECT_EQ(noise.corruption.type, CorruptionType::gaussian_noise);
  EXPECT_EQ(noise.corruption.sigma, 0.1);
  EXPECT_EQ(noise.corruption.seed, 9u);
  const PerturbationOptions salt = parse_perturbation("salt-and-pepper:0.05", "c", 3);
  EXPECT_EQ(salt.corruption.type, CorruptionType::salt_and_pepper);
  EXPECT_EQ(salt.corruption.fraction, 0.05);
  EXPECT_EQ(salt.corruption.seed, 3u);
  EXPECT_EQ(parse_perturbation("blur:1.5", "c").corruption.sigma, 1.5);
  EXPECT_EQ(parse_perturbation("contrast:1/2", "c").corruption.factor, 0.5);
  const PerturbationOptions fgsm = parse_perturbation("fgsm:8/255", "c");
  EXPECT_EQ(fgsm.type, PerturbationType::fgsm);
  EXPECT_EQ(fgsm.epsilon, 8.0 / 255.0);
  const PerturbationOptions pgd = parse_perturbation("pgd:4/255", "c");
  EXPECT_EQ(pgd.type, PerturbationType::pgd);
  EXPECT_EQ(pgd.steps, 10);
  EXPECT_EQ(pgd.epsilon, 4.0 / 255.0);
  EXPECT_FALSE(pgd.random_start);
  EXPECT_EQ(parse_perturbation("pgd-20:0.01", "c").steps, 20);

  for (const char* bad : {"", "clean:0", "noise", "noise:", "noise:x", "noise: 0.1", "noise:0.1x",
                          "noise:-1", "noise:nan", "noise:inf", "noise:1/0", "noise:1e7",
                          "haze:0.1", "pgd-:0.1", "pgd-x:0.1", "pgd-1234567:0.1", "PGD:0.1"})
    expect_error_naming<ArgumentError>([&] { parse_perturbation(bad, "conditions[3]"); },
                                       "conditions[3]");
  expect_error_naming<ArgumentError>([&] { parse_perturbation("pgd-0:0.1", "c"); },
                                     "PerturbationOptions::steps");
  expect_error_naming<ArgumentError>([&] { parse_perturbation("salt-and-pepper:2", "c"); },
                                     "CorruptionOptions::fraction");
  expect_error_naming<ArgumentError>([&] { parse_pixel_length("0", "--step", true); },
                                     "--step: expected a number > 0");
}

TEST(Adversarial, BadOptionsAndPixelsAreNamed) {
  const VisionTransformer<float> model(attack_vit());
  const PixelClassifier<float> classifier{model, k_attack_normalization, {}};
  const ImageDataset<float> data = quadrant_pixels<float>(2, 24);
  const auto perturb = [&](const PerturbationOptions& options) {
    return [&classifier, &data, options] {
      perturb_images(classifier, data.images, data.labels, options);
    };
  };
  expect_error_naming<ArgumentError>(
      perturb(PerturbationOptions::fgsm(-0.01)),
      "PerturbationOptions::epsilon: expected a value in [0, 1e+06], "
      "got -0.01");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::fgsm(std::nan(""))),
                                     "PerturbationOptions::epsilon");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::fgsm(1e300)),
                                     "PerturbationOptions::epsilon");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::pgd(INFINITY)),
                                     "PerturbationOptions::epsilon");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::pgd(0.1, 0)),
                                     "PerturbationOptions::steps: expected >= 1, got 0");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::pgd(0.1, 5, -1)),
                                     "PerturbationOptions::step_size");
  expect_error_naming<ArgumentError>(perturb(PerturbationOptions::noise(-0.1)),
                                     "CorruptionOptions::sigma");
  expect_error_naming<ArgumentError>(
      [&] { evaluate_perturbed(classifier, data, PerturbationOptions::fgsm(-1), 4); },
      "PerturbationOptions::epsilon");
  // Pixels must be pixels: an attack's ball and the clamping are in [0, 1].
  Tensor<float> normalized = data.images;
  normalize_images(normalized, k_attack_normalization);
  expect_error_naming<ArgumentError>(
      [&] { perturb_images(classifier, normalized, data.labels, PerturbationOptions::fgsm(0.1)); },
      "a value in [0, 1] (pixel units");
  expect_error_naming<ShapeError>(
      [&] {
        perturb_images(classifier, data.images, {0, 1, 2}, PerturbationOptions::fgsm(0.1));
      },
      "labels");
}

}  // namespace
}  // namespace attnlens
