// Training and evaluating a vision transformer classifier on CPU (docs/training.md): an epoch of
// minibatch steps (seeded order and augmentation, forward with cache, mean cross-entropy,
// backward, clipping, one optimizer step at the schedule's learning rate), resumable after any
// step, and the test-set evaluation (loss, accuracy, confusion matrix).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/image/augment.hpp"
#include "attnlens/layers/dropout.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/gradient_step.hpp"
#include "attnlens/train/image_dataset.hpp"

namespace attnlens {

struct ClassifierTrainingOptions {
  Index batch_size = 128;
  // The data order of epoch e is DataOrder's stream e of this seed; the augmentation draws of
  // batch b of epoch e come from their own stream (below): nothing carries over between steps,
  // so a run resumed after any step sees what an uninterrupted run sees.
  std::uint64_t seed = 0;
  AugmentOptions augment{0, 0.0, 0.0};  // crop padding 0, no flips: no augmentation
  double clip_norm = 0;                 // > 0: clip the gradient's global L2 norm to it
  ParallelOptions parallel;
};

// Where an epoch stands: the next batch, and the sums of the batches done (a checkpoint saves
// them, so an epoch resumed mid-way reports what an uninterrupted one does).
struct EpochProgress {
  Index next_batch = 0;
  double loss_sum = 0;      // the sum over the images seen of their cross-entropy
  Index correct = 0;        // images whose largest logit was their label
  Index images = 0;         // images seen
  Index skipped_steps = 0;  // steps left out because the gradient was not finite

  double loss() const { return images > 0 ? loss_sum / static_cast<double>(images) : 0.0; }
  double accuracy() const {
    return images > 0 ? static_cast<double>(correct) / static_cast<double>(images) : 0.0;
  }
};

namespace detail {

// The augmentation generator of batch b of epoch e: its own seed (the data order uses the run's
// seed itself) and stream e * batches + b.
inline PortableRng augmentation_rng(std::uint64_t seed, Index epoch, Index batches, Index batch) {
  constexpr std::uint64_t k_augmentation_seed = 0x6a09e667f3bcc909u;  // sqrt(2)'s bits
  return PortableRng(seed ^ k_augmentation_seed,
                     static_cast<std::uint64_t>(epoch) * static_cast<std::uint64_t>(batches) +
                         static_cast<std::uint64_t>(batch));
}

// The dropout key of batch `batch` of epoch `epoch` (layers/dropout.hpp): part epoch * batches +
// batch of the seed's own. Counted in batches, not optimizer steps, so that a step skipped for a
// non-finite gradient does not hand its masks to the next batch.
inline std::uint64_t dropout_key(std::uint64_t seed, Index epoch, Index batches, Index batch) {
  constexpr std::uint64_t k_dropout_seed = 0xa54ff53a5f1d36f1u;  // sqrt(7)'s bits
  return dropout_part_key(seed ^ k_dropout_seed,
                          static_cast<std::uint64_t>(epoch) * static_cast<std::uint64_t>(batches) +
                              static_cast<std::uint64_t>(batch));
}

template <class T>
void check_training_data(const ImageDataset<T>& data, const VisionTransformer<T>& model,
                         const char* what) {
  const VisionTransformerOptions& o = model.options();
  require_shape(data.images.rank() == 4 && data.images.dim(0) == data.size() &&
                    data.images.dim(1) == o.in_chans && data.images.dim(2) == o.image_height &&
                    data.images.dim(3) == o.image_width,
                concat(what, " images"),
                concat("[", data.size(), ", ", o.in_chans, ", ", o.image_height, ", ",
                       o.image_width, "] (one per label, the model's in_chans and image size)"),
                shape_string(data.images.shape()));
  require_argument(o.num_classes > 0, "the model's num_classes", "> 0 (a classifier)",
                   o.num_classes);
  for (Index label : data.labels)
    require_argument(label >= 0 && label < o.num_classes, concat(what, " labels"),
                     concat("classes in [0, ", o.num_classes, ")"), label);
}

}  // namespace detail

// Runs epoch `epoch` (0 for the first) from progress.next_batch on. Batch b holds the examples
// DataOrder(data.size(), {batch_size, shuffle, no drop_last, seed}) puts there, each image
// augmented with its own draws. Each step: a training forward with cache (dropout at the
// model's rates, masks keyed by the seed and the step count), mean cross-entropy, backward,
// clipping (options.clip_norm), and optimizer.step at learning_rate(optimizer.steps()); a step
// whose gradient norm is not finite is left out (counted in progress.skipped_steps). After each
// step, after_step(progress) is called: returning false stops the epoch there (progress then
// says where to resume). Returns true when the epoch is complete.
template <class T, class Optimizer, class LearningRate, class AfterStep>
bool train_epoch(VisionTransformer<T>& model, VisionTransformer<T>& gradient, Optimizer& optimizer,
                 const ImageDataset<T>& data, const ClassifierTrainingOptions& options, Index epoch,
                 EpochProgress& progress, LearningRate&& learning_rate, AfterStep&& after_step) {
  detail::check_training_data(data, model, "training");
  check_clip_norm(options.clip_norm, "ClassifierTrainingOptions::clip_norm");
  DataOrderOptions order_options;
  order_options.batch_size = options.batch_size;
  order_options.seed = options.seed;
  const DataOrder order(data.size(), order_options);
  const Index batches = order.batches();
  detail::require_argument(progress.next_batch >= 0 && progress.next_batch <= batches,
                           "EpochProgress::next_batch",
                           detail::concat("a batch in [0, ", batches, "]"), progress.next_batch);
  const std::vector<Index> epoch_order = order.epoch_order(static_cast<std::uint64_t>(epoch));
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  EncoderBackwardOptions backward;
  backward.parallel = options.parallel;
  const bool augmenting = options.augment.crop_padding > 0 || options.augment.flip_probability > 0;

  for (; progress.next_batch < batches;) {
    const std::vector<Index> examples = order.batch(epoch_order, progress.next_batch);
    Tensor<T> images = gather_first_axis(data.images, examples);
    if (augmenting) {
      PortableRng rng = detail::augmentation_rng(options.seed, epoch, batches, progress.next_batch);
      images = augment_images(images, options.augment, rng);
    }
    const std::vector<Index> labels = gather_first_axis(data.labels, examples);

    set_zero(gradient);
    VitCache<T> cache;
    // The batch's dropout masks: a function of the seed, the epoch and the batch, which a resumed
    // run restores.
    forward.dropout_key = detail::dropout_key(options.seed, epoch, batches, progress.next_batch);
    const VitOutput<T> out = model.forward(images, forward, &cache);
    const CrossEntropy<T> loss = softmax_cross_entropy<T>(out.logits.matrix(), labels);
    model.backward(cache, Tensor<T>::from_matrix(loss.grad_logits), gradient, backward);
    if (!std::isfinite(
            clipped_gradient_step(model, gradient, optimizer, options.clip_norm, learning_rate)))
      ++progress.skipped_steps;
    const auto count = static_cast<Index>(labels.size());
    progress.loss_sum += loss.loss * static_cast<double>(count);
    for (Index i = 0; i < count; ++i)
      progress.correct +=
          loss.predictions[static_cast<std::size_t>(i)] == labels[static_cast<std::size_t>(i)];
    progress.images += count;
    ++progress.next_batch;
    if (!after_step(static_cast<const EpochProgress&>(progress))) break;
  }
  return progress.next_batch == batches;
}

// A classifier's loss and accuracy on a data set, and what it predicted.
struct ClassifierEvaluation {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // the fraction of images whose largest logit is their label
  std::vector<Index> predictions;
  // classes x classes: row = the label, column = the prediction (counts).
  Matrix<Index> confusion;

  // Per class: the fraction of its images predicted as it (0 for a class without images).
  std::vector<double> class_accuracies() const {
    std::vector<double> accuracies;
    for (Index c = 0; c < confusion.rows(); ++c) {
      const Index images = confusion.row(c).sum();
      accuracies.push_back(images > 0 ? static_cast<double>(confusion(c, c)) /
                                            static_cast<double>(images)
                                      : 0.0);
    }
    return accuracies;
  }
};

// Evaluates `model` on `data` in batches of batch_size (no augmentation, no cache). Each batch
// goes through model_input(images, labels, first) before the model sees it, `first` being the
// index of the batch's first image in `data`: that is how a condition (train/adversarial.hpp:
// noise, an attack, each image with its own random stream) changes the input and nothing else.
template <class T, class ModelInput>
ClassifierEvaluation evaluate_classifier(const VisionTransformer<T>& model,
                                         const ImageDataset<T>& data, Index batch_size,
                                         const ParallelOptions& parallel, ModelInput&& model_input) {
  detail::check_training_data(data, model, "evaluation");
  detail::require_argument(batch_size >= 1, "evaluate_classifier batch_size", ">= 1", batch_size);
  const Index classes = model.options().num_classes;
  ClassifierEvaluation result;
  result.confusion = Matrix<Index>::Zero(classes, classes);
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  double loss_sum = 0;
  Index correct = 0;
  for (Index begin = 0; begin < data.size(); begin += batch_size) {
    std::vector<Index> examples(
        static_cast<std::size_t>(std::min(batch_size, data.size() - begin)));
    for (std::size_t i = 0; i < examples.size(); ++i) examples[i] = begin + static_cast<Index>(i);
    const std::vector<Index> labels = gather_first_axis(data.labels, examples);
    const VitOutput<T> out = model.forward(
        model_input(gather_first_axis(data.images, examples), labels, begin), forward);
    const CrossEntropy<T> loss = softmax_cross_entropy<T>(out.logits.matrix(), labels);
    loss_sum += loss.loss * static_cast<double>(labels.size());
    for (std::size_t i = 0; i < labels.size(); ++i) {
      const Index predicted = loss.predictions[i];
      result.predictions.push_back(predicted);
      ++result.confusion(labels[i], predicted);
      correct += predicted == labels[i];
    }
  }
  if (data.size() > 0) {
    result.loss = loss_sum / static_cast<double>(data.size());
    result.accuracy = static_cast<double>(correct) / static_cast<double>(data.size());
  }
  return result;
}

// Evaluates `model` on `data` as it is: the images are the model's input.
template <class T>
ClassifierEvaluation evaluate_classifier(const VisionTransformer<T>& model,
                                         const ImageDataset<T>& data, Index batch_size,
                                         const ParallelOptions& parallel = {}) {
  return evaluate_classifier(model, data, batch_size, parallel,
                             [](Tensor<T> images, const std::vector<Index>&, Index) {
                               return images;
                             });
}

}  // namespace attnlens
