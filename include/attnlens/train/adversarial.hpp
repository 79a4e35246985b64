// Perturbations of a classifier's input, in pixel units (the image in [0, 1], before the model's
// per-channel normalization (x - mean) / std): Gaussian noise, and the L-infinity attacks FGSM
// (Goodfellow, Shlens and Szegedy 2015) and PGD (Madry et al. 2018) driven by the gradient of the
// mean cross-entropy with respect to the pixels, which VisionTransformer::backward returns through
// the normalization. A condition (PerturbationOptions) is a value: evaluate_perturbed runs the
// classifier evaluation under it (docs/training.md, "Evaluating: accuracy under noise and
// attacks").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <locale>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/image/augment.hpp"
#include "attnlens/image/corruption.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "attnlens/train/image_dataset.hpp"

namespace attnlens {

enum class PerturbationType {
  none,        // the clean input
  corruption,  // one of image/corruption.hpp's seeded corruptions (Gaussian noise among them)
  fgsm,        // x + epsilon sign(dL/dx), clamped to [0, 1]
  pgd,         // `steps` signed-gradient steps, each projected onto the epsilon ball and [0, 1]
};

inline constexpr Named<PerturbationType> k_perturbation_names[] = {
    {PerturbationType::none, "none"},
    {PerturbationType::corruption, "corruption"},
    {PerturbationType::fgsm, "fgsm"},
    {PerturbationType::pgd, "pgd"}};

// One evaluation condition. Lengths are in pixel units: 2/255 is two grey levels of an 8-bit
// image whatever the model's mean and std. Only the fields of `type` are read.
struct PerturbationOptions {
  PerturbationType type = PerturbationType::none;
  CorruptionOptions corruption;  // corruption: which one, with its own seed
  double epsilon = 0;            // fgsm, pgd: the L-infinity radius around the clean image
  Index steps = 10;              // pgd: K >= 1
  double step_size = 0;          // pgd: alpha; 0 stands for 2.5 epsilon / steps (below)
  bool random_start = false;     // pgd: start at a uniform draw from the epsilon ball
  std::uint64_t seed = 0;        // pgd's random start

  static PerturbationOptions clean() { return {}; }
  static PerturbationOptions corrupted(const CorruptionOptions& corruption) {
    PerturbationOptions o;
    o.type = PerturbationType::corruption;
    o.corruption = corruption;
    return o;
  }
  // Gaussian noise of standard deviation sigma, clamped to [0, 1]: CorruptionOptions::noise.
  static PerturbationOptions noise(double sigma, std::uint64_t seed = 0) {
    return corrupted(CorruptionOptions::noise(sigma, seed));
  }
  static PerturbationOptions fgsm(double epsilon) {
    PerturbationOptions o;
    o.type = PerturbationType::fgsm;
    o.epsilon = epsilon;
    return o;
  }
  static PerturbationOptions pgd(double epsilon, Index steps = 10, double step_size = 0) {
    PerturbationOptions o;
    o.type = PerturbationType::pgd;
    o.epsilon = epsilon;
    o.steps = steps;
    o.step_size = step_size;
    return o;
  }
};

// PGD's step: the given one, or 2.5 epsilon / steps (the default of Madry's lab's `robustness`
// library: enough to cross the ball and come back, so that the last steps can move along its
// faces).
inline double pgd_step_size(const PerturbationOptions& options) {
  return options.step_size > 0 ? options.step_size
                               : 2.5 * options.epsilon / static_cast<double>(options.steps);
}

// Throws ArgumentError naming the first field of `type` out of its domain.
inline void check_perturbation_options(const PerturbationOptions& options) {
  const auto finite_non_negative = [](double value, const char* what) {
    detail::require_argument(value >= 0 && value <= k_max_pixel_length, what,
                             detail::concat("a value in [0, ", k_max_pixel_length, "]"), value);
  };
  switch (options.type) {
    case PerturbationType::none:
      break;
    case PerturbationType::corruption:
      check_corruption_options(options.corruption);
      break;
    case PerturbationType::pgd:
      detail::require_argument(options.steps >= 1, "PerturbationOptions::steps", ">= 1",
                               options.steps);
      finite_non_negative(options.step_size, "PerturbationOptions::step_size");
      [[fallthrough]];
    case PerturbationType::fgsm:
      finite_non_negative(options.epsilon, "PerturbationOptions::epsilon");
      break;
  }
}

// A short name for reports: "clean", a corruption's label, "fgsm eps 0.00784314",
// "pgd-10 eps 0.00784314 step 0.00196078" (+ " random start, seed 3").
inline std::string perturbation_label(const PerturbationOptions& options) {
  using detail::concat;
  switch (options.type) {
    case PerturbationType::none:
      return "clean";
    case PerturbationType::corruption:
      return corruption_label(options.corruption);
    case PerturbationType::fgsm:
      return concat("fgsm eps ", options.epsilon);
    case PerturbationType::pgd:
      return concat("pgd-", options.steps, " eps ", options.epsilon, " step ",
                    pgd_step_size(options),
                    options.random_start ? concat(" random start, seed ", options.seed) : "");
  }
  return "?";
}

// A length in pixel units as text: a number, or a fraction "a/b" (2/255: two grey levels);
// finite, >= 0 (> 0 when `positive`) and at most k_max_pixel_length. Throws ArgumentError naming
// `what` otherwise.
inline double parse_pixel_length(const std::string& text, const std::string& what,
                                 bool positive = false) {
  const auto fail = [&]() -> double {
    throw ArgumentError(detail::concat(
        what, ": expected a number ", positive ? "> 0" : ">= 0", " and <= ", k_max_pixel_length,
        " in pixel units (the image in [0, 1]) or a fraction like 2/255, got '", text, "'"));
  };
  const auto number = [&](const std::string& part) {
    std::istringstream in(part);
    in.imbue(std::locale::classic());
    double value = 0;
    if (part.empty() || std::isspace(static_cast<unsigned char>(part[0])) || !(in >> value) ||
        in.peek() != std::char_traits<char>::eof())
      fail();
    return value;
  };
  const std::size_t slash = text.find('/');
  const double value = slash == std::string::npos
                           ? number(text)
                           : number(text.substr(0, slash)) / number(text.substr(slash + 1));
  if (!(value >= 0 && value <= k_max_pixel_length) || (positive && value == 0)) fail();
  return value;
}

// A condition written as text, as `attnlens eval --condition` and study configurations take it:
//   clean
//   noise:SIGMA  salt-and-pepper:FRACTION  blur:SIGMA  contrast:FACTOR   (image/corruption.hpp;
//                the random ones draw from `seed`)
//   fgsm:EPS  pgd:EPS  pgd-K:EPS                                         (K steps, default 10)
// every value a pixel length (parse_pixel_length: 0.1, 2/255). Throws ArgumentError naming `what`.
inline PerturbationOptions parse_perturbation(const std::string& text, const std::string& what,
                                              std::uint64_t seed = 0) {
  if (text == "clean") return PerturbationOptions::clean();
  const std::size_t colon = text.find(':');
  const std::string kind = text.substr(0, colon);
  const auto fail = [&]() -> PerturbationOptions {
    throw ArgumentError(
        detail::concat(what,
                       ": expected clean, noise:SIGMA, salt-and-pepper:FRACTION, blur:SIGMA, "
                       "contrast:FACTOR, fgsm:EPS, pgd:EPS or pgd-K:EPS (e.g. pgd-10:2/255), got '",
                       text, "'"));
  };
  if (colon == std::string::npos) return fail();
  const double value = parse_pixel_length(text.substr(colon + 1), what);
  PerturbationOptions options;
  if (kind == "noise") {
    options = PerturbationOptions::noise(value, seed);
  } else if (kind == "salt-and-pepper") {
    options = PerturbationOptions::corrupted(CorruptionOptions::salt_and_pepper(value, seed));
  } else if (kind == "blur") {
    options = PerturbationOptions::corrupted(CorruptionOptions::blur(value));
  } else if (kind == "contrast") {
    options = PerturbationOptions::corrupted(CorruptionOptions::contrast(value));
  } else if (kind == "fgsm") {
    options = PerturbationOptions::fgsm(value);
  } else if (kind == "pgd") {
    options = PerturbationOptions::pgd(value);
  } else if (kind.rfind("pgd-", 0) == 0 && kind.size() > 4 && kind.size() <= 10 &&
             kind.find_first_not_of("0123456789", 4) == std::string::npos) {
    options = PerturbationOptions::pgd(value, std::stol(kind.substr(4)));
  } else {
    return fail();
  }
  try {
    check_perturbation_options(options);
  } catch (const ArgumentError& e) {
    throw ArgumentError(detail::concat(what, ": '", text, "': ", e.what()));
  }
  return options;
}

// A classifier seen from pixel space: images in [0, 1] are normalized per channel before the
// model sees them (ImageNormalization: the model directory's mean and std).
template <class T>
struct PixelClassifier {
  const VisionTransformer<T>& model;
  ImageNormalization normalization;
  ParallelOptions parallel;
};

// The model's input for a batch of pixels: (x - mean) / std per channel.
template <class T>
Tensor<T> model_input(const PixelClassifier<T>& classifier, Tensor<T> pixels) {
  normalize_images(pixels, classifier.normalization);
  return pixels;
}

template <class T>
struct PixelLossGradient {
  double loss = 0;                 // the batch's mean cross-entropy
  Tensor<T> gradient;              // d loss / d pixels, B x C x H x W
  std::vector<Index> predictions;  // each image's largest logit
};

// The mean cross-entropy of the batch against `labels` and its gradient with respect to the
// pixels: VisionTransformer::backward returns d loss / d input, the normalized image, and the
// chain rule through (x - mean) / std divides it by std, channel by channel.
template <class T>
PixelLossGradient<T> pixel_loss_gradient(const PixelClassifier<T>& classifier,
                                         const Tensor<T>& pixels,
                                         const std::vector<Index>& labels) {
  EncoderForwardOptions forward;
  forward.parallel = classifier.parallel;
  EncoderBackwardOptions backward;
  backward.parallel = classifier.parallel;
  VitCache<T> cache;
  const VitOutput<T> out =
      classifier.model.forward(model_input(classifier, pixels), forward, &cache);
  CrossEntropy<T> loss = softmax_cross_entropy<T>(out.logits.matrix(), labels);
  // The backward pass accumulates the parameters' gradients too; an attack does not need them.
  VisionTransformer<T> parameter_gradient = zeros_like(classifier.model);
  PixelLossGradient<T> result;
  result.loss = loss.loss;
  result.predictions = std::move(loss.predictions);
  result.gradient = classifier.model.backward(cache, Tensor<T>::from_matrix(loss.grad_logits),
                                              parameter_gradient, backward);
  // d/dx (x - mean) / std = 1 / std: the normalization with mean 0 divides by std.
  normalize_images(result.gradient, ImageNormalization{{0.0}, classifier.normalization.std});
  return result;
}

namespace detail {

// PGD's random start draws from image i's own stream (detail::image_rng, image/corruption.hpp),
// so it does not depend on the batch the image is in, on --limit or on the thread count.
inline constexpr std::uint64_t k_random_start_stream = 0x3c6ef372fe94f82bu;  // sqrt(5)'s bits

// sign(g) with sign(0) = 0 and NaN treated as 0: a pixel without gradient information stays.
template <class T>
T gradient_sign(T g) {
  return static_cast<T>((g > T(0)) - (g < T(0)));
}

// PGD (Madry et al. 2018, their equation (2)) on the L-infinity ball of radius epsilon around
// the clean images x, intersected with the pixel range:
//   x_0     = x, or with random_start clamp(x + u, [x - eps, x + eps] and [0, 1]), u ~ U(-eps, eps)
//   x_{t+1} = clamp(x_t + alpha sign(dL/dx(x_t)), [x - eps, x + eps] and [0, 1])
// and x_K is returned (the last iterate, not the one of largest loss). Clamping to the
// intersection of two boxes, a box, is the projection onto it. FGSM is one step with
// alpha = epsilon from x: clamp(x + eps sign(dL/dx), [0, 1]).
template <class T>
Tensor<T> linf_attack(const PixelClassifier<T>& classifier, const Tensor<T>& pixels,
                      const std::vector<Index>& labels, const PerturbationOptions& options,
                      Index first_image) {
  const bool fgsm = options.type == PerturbationType::fgsm;
  const Index steps = fgsm ? 1 : options.steps;
  const T epsilon = static_cast<T>(options.epsilon);
  const T alpha = static_cast<T>(fgsm ? options.epsilon : pgd_step_size(options));
  Tensor<T> lower(pixels.shape()), upper(pixels.shape());
  for (Index i = 0; i < pixels.size(); ++i) {
    lower.data()[i] = std::max(pixels.data()[i] - epsilon, T(0));
    upper.data()[i] = std::min(pixels.data()[i] + epsilon, T(1));
  }
  Tensor<T> x = pixels;
  if (!fgsm && options.random_start) {
    for_each_image_pixel(x, options.seed, k_random_start_stream, first_image,
                         [&](PortableRng& rng, T value) {
                           const double u = options.epsilon * (2.0 * rng.uniform() - 1.0);
                           return value + static_cast<T>(u);
                         });
    for (Index i = 0; i < x.size(); ++i)
      x.data()[i] = clamp_pixel(x.data()[i], lower.data()[i], upper.data()[i]);
  }
  for (Index step = 0; step < steps; ++step) {
    const Tensor<T> gradient = pixel_loss_gradient(classifier, x, labels).gradient;
    for (Index i = 0; i < x.size(); ++i)
      x.data()[i] = clamp_pixel(x.data()[i] + alpha * gradient_sign(gradient.data()[i]),
                                lower.data()[i], upper.data()[i]);
  }
  return x;
}

}  // namespace detail

// The batch `pixels` (B x C x H x W in [0, 1]: images first_image, first_image + 1, ... of a
// data set, with their labels) under the condition `options`:
//   none:            the pixels as they are (any values);
//   corruption:      corrupt_images (image/corruption.hpp): image i draws from its own stream
//                    of the corruption's seed;
//   fgsm, pgd:       detail::linf_attack above, the loss being the batch's mean cross-entropy
//                    against `labels` (the signs do not depend on the mean's 1 / B).
// The result stays within [0, 1] and, for the attacks, within epsilon of x in every pixel.
template <class T>
Tensor<T> perturb_images(const PixelClassifier<T>& classifier, const Tensor<T>& pixels,
                         const std::vector<Index>& labels, const PerturbationOptions& options,
                         Index first_image = 0) {
  check_perturbation_options(options);
  detail::require_argument(first_image >= 0, "perturb_images first_image", ">= 0", first_image);
  if (options.type == PerturbationType::none) return pixels;
  if (options.type == PerturbationType::corruption)  // checks the pixels itself
    return corrupt_images(pixels, options.corruption, first_image);
  detail::check_unit_pixels(pixels, "perturbed pixels");
  return detail::linf_attack(classifier, pixels, labels, options, first_image);
}

// evaluate_classifier on `pixels` (a data set of images in [0, 1]) under the condition
// `options`: each batch of batch_size images is perturbed, normalized and classified, and the
// loss, accuracy and confusion matrix are those of the perturbed images against their labels.
template <class T>
ClassifierEvaluation evaluate_perturbed(const PixelClassifier<T>& classifier,
                                        const ImageDataset<T>& pixels,
                                        const PerturbationOptions& options, Index batch_size) {
  check_perturbation_options(options);
  return evaluate_classifier(
      classifier.model, pixels, batch_size, classifier.parallel,
      [&](Tensor<T> images, const std::vector<Index>& labels, Index first) {
        return model_input(classifier, perturb_images(classifier, images, labels, options, first));
      });
}

}  // namespace attnlens
