// train_epoch and evaluate_classifier on a small synthetic task (the class of an 8 x 8 image is
// the quadrant that is bright): the loss falls and the accuracy rises; an epoch stopped after
// any step and resumed from the saved model, optimizer state and progress ends bitwise where an
// uninterrupted one does; the evaluation's confusion matrix adds up; bad data is named.
#include <gtest/gtest.h>

#include <vector>

#include "attnlens/train/adamw.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// `count` images 1 x 8 x 8: noise, plus a bright 4 x 4 quadrant whose index is the label.
ImageDataset<float> quadrant_images(Index count, std::uint64_t seed) {
  ImageDataset<float> data;
  data.images = Tensor<float>({count, 1, 8, 8});
  PortableRng rng(seed);
  for (Index n = 0; n < count; ++n) {
    const Index label = static_cast<Index>(rng.below(4));
    data.labels.push_back(label);
    for (Index y = 0; y < 8; ++y)
      for (Index x = 0; x < 8; ++x) {
        const bool bright = (y / 4) * 2 + (x / 4) == label;
        data.images.data()[(n * 8 + y) * 8 + x] =
            static_cast<float>(rng.uniform() - 0.5 + (bright ? 1.0 : 0.0));
      }
  }
  data.class_names = {"top left", "top right", "bottom left", "bottom right"};
  return data;
}

VisionTransformerOptions tiny_vit() {
  VisionTransformerOptions o;
  o.image_height = o.image_width = 8;
  o.patch_size = 2;
  o.in_chans = 1;
  o.num_classes = 4;
  o.encoder.layer = {16, 2, 32, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  return o;
}

ClassifierTrainingOptions tiny_training() {
  ClassifierTrainingOptions o;
  o.batch_size = 16;
  o.seed = 7;
  o.augment = {1, 0.5, 0.0};
  o.clip_norm = 1.0;
  o.parallel.threads = 1;  // bitwise reproducible
  return o;
}

const auto constant_lr = [](std::int64_t) { return 3e-3; };
const auto never_stop = [](const EpochProgress&) { return true; };

TEST(ClassifierTraining, LossFallsAndAccuracyRises) {
  const ImageDataset<float> train = quadrant_images(128, 1), test = quadrant_images(64, 2);
  Rng rng(3);
  VisionTransformer<float> model(tiny_vit(), rng);
  VisionTransformer<float> gradient = zeros_like(model);
  AdamW<float> optimizer(AdamWOptions{});
  const ClassifierEvaluation before = evaluate_classifier(model, test, 50);
  ClassifierTrainingOptions options = tiny_training();
  options.augment = {0, 0.0, 0.0};
  std::vector<double> losses;
  for (Index epoch = 0; epoch < 25; ++epoch) {
    EpochProgress progress;
    EXPECT_TRUE(train_epoch(model, gradient, optimizer, train, options, epoch, progress,
                            constant_lr, never_stop));
    EXPECT_EQ(progress.images, 128);
    EXPECT_EQ(progress.next_batch, 8);
    losses.push_back(progress.loss());
  }
  EXPECT_EQ(optimizer.steps(), 25 * 8);
  EXPECT_LT(losses.back(), 0.5 * losses.front());
  const ClassifierEvaluation after = evaluate_classifier(model, test, 50);
  EXPECT_LT(after.loss, before.loss);
  EXPECT_GE(after.accuracy, 0.9);
  // The confusion matrix counts every image once, its diagonal the correct ones.
  EXPECT_EQ(after.confusion.sum(), 64);
  EXPECT_DOUBLE_EQ(static_cast<double>(after.confusion.trace()) / 64, after.accuracy);
  EXPECT_EQ(after.predictions.size(), 64u);
}

TEST(ClassifierTraining, AnEpochResumedAfterAnyStepEndsBitwiseWhereAnUninterruptedOneDoes) {
  const ImageDataset<float> train = quadrant_images(100, 4);  // a last batch of 4
  Rng rng(5);
  VisionTransformerOptions options = tiny_vit();
  options.encoder.layer.dropout = 0.2;  // the masks follow (seed, step), so they resume too
  const VisionTransformer<float> initial(options, rng);
  const auto run_epochs = [&](VisionTransformer<float>& model, AdamW<float>& optimizer,
                              Index first_epoch, Index last_epoch, EpochProgress progress) {
    VisionTransformer<float> gradient = zeros_like(model);
    for (Index epoch = first_epoch; epoch < last_epoch; ++epoch, progress = {})
      train_epoch(model, gradient, optimizer, train, tiny_training(), epoch, progress, constant_lr,
                  never_stop);
  };
  VisionTransformer<float> straight = initial;
  AdamW<float> straight_optimizer(AdamWOptions{});
  run_epochs(straight, straight_optimizer, 0, 2, {});

  // Stop epoch 1 after its third step; restart from copies of what a checkpoint holds.
  VisionTransformer<float> first = initial;
  AdamW<float> first_optimizer(AdamWOptions{});
  run_epochs(first, first_optimizer, 0, 1, {});
  VisionTransformer<float> gradient = zeros_like(first);
  EpochProgress progress;
  EXPECT_FALSE(train_epoch(first, gradient, first_optimizer, train, tiny_training(), 1, progress,
                           constant_lr, [](const EpochProgress& p) { return p.next_batch < 3; }));
  EXPECT_EQ(progress.next_batch, 3);
  VisionTransformer<float> resumed = first;
  AdamW<float> resumed_optimizer(AdamWOptions{});
  resumed_optimizer.load_state(first_optimizer.state(), resumed);
  run_epochs(resumed, resumed_optimizer, 1, 2, progress);

  const auto a = named_parameters(straight), b = named_parameters(resumed);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(std::equal(a[i].data, a[i].data + a[i].size, b[i].data)) << a[i].name;
  EXPECT_EQ(resumed_optimizer.steps(), straight_optimizer.steps());
}

TEST(ClassifierTraining, DropoutIsOnInTrainingAndDrawsNewMasksEachBatch) {
  const ImageDataset<float> train = quadrant_images(32, 4);
  const auto one_epoch = [&](double dropout) {
    VisionTransformerOptions options = tiny_vit();
    options.encoder.layer.dropout = dropout;
    Rng rng(5);
    VisionTransformer<float> model(options, rng);
    VisionTransformer<float> gradient = zeros_like(model);
    AdamW<float> optimizer(AdamWOptions{});
    EpochProgress progress;
    train_epoch(model, gradient, optimizer, train, tiny_training(), 0, progress, constant_lr,
                never_stop);
    return std::pair{named_parameters(model)[0].data[0], progress.loss_sum};
  };
  // The same initial weights and batches: only the masks differ.
  const auto [weight_without, loss_without] = one_epoch(0.0);
  const auto [weight_with, loss_with] = one_epoch(0.2);
  EXPECT_NE(loss_with, loss_without);
  EXPECT_NE(weight_with, weight_without);
  // Two batches' keys differ (the masks of a batch are a function of the epoch and the batch).
  EXPECT_NE(detail::dropout_key(7, 0, 2, 0), detail::dropout_key(7, 0, 2, 1));
  EXPECT_NE(detail::dropout_key(7, 0, 2, 1), detail::dropout_key(7, 1, 2, 1));
}

TEST(ClassifierTraining, BadDataIsNamed) {
  ImageDataset<float> data = quadrant_images(8, 6);
  Rng rng(1);
  VisionTransformer<float> model(tiny_vit(), rng);
  data.labels[3] = 4;
  expect_error_naming<ArgumentError>([&] { evaluate_classifier(model, data, 4); },
                                     "evaluation labels");
  ImageDataset<float> wrong = quadrant_images(8, 6);
  wrong.images = Tensor<float>({8, 1, 6, 8});
  VisionTransformer<float> gradient = zeros_like(model);
  AdamW<float> optimizer(AdamWOptions{});
  EpochProgress progress;
  expect_error_naming<ShapeError>(
      [&] {
        train_epoch(model, gradient, optimizer, wrong, tiny_training(), 0, progress, constant_lr,
                    never_stop);
      },
      "training images");
}

}  // namespace
}  // namespace attnlens
