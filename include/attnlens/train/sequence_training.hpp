// Training and evaluating a SequenceClassifier on ListOps (docs/training.md, "Sequence
// classifiers and ListOps"): one training step on a padded batch (forward with cache, mean
// cross-entropy, backward, clipping, one optimizer step at the schedule's learning rate), and the
// evaluation of a held-out set: loss, accuracy, and accuracy per length bucket.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/blocks/sequence_classifier.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/gradient_step.hpp"
#include "attnlens/train/listops.hpp"

namespace attnlens {

struct SequenceStepOptions {
  double clip_norm = 0;  // > 0: clip the gradient's global L2 norm to it
  ParallelOptions parallel;
  // automatic takes the reference engine, which keeps B x H x L x L weights per layer for the
  // backward pass; fused keeps each row's log-sum-exp only (O(L) memory per head).
  AttentionEngine engine = AttentionEngine::automatic;
  // Set: a training forward, dropout at the model's rates with masks drawn from this key (give
  // each step its own, e.g. dropout_part_key(seed, step)). Unset: no dropout.
  std::optional<std::uint64_t> dropout_key = std::nullopt;
};

// What one step saw and did.
struct SequenceStep {
  double loss = 0;           // the batch's mean cross-entropy, before the step
  Index correct = 0;         // examples whose largest logit was their label, before the step
  double gradient_norm = 0;  // the global L2 norm before clipping
  bool stepped = false;      // false: the norm was not finite and the step was left out
};

// One step on `batch`: set_zero(gradient), forward with cache (key padding from batch.lengths),
// softmax cross-entropy against batch.labels, backward, then clipped_gradient_step: clipping to
// options.clip_norm and optimizer.step at learning_rate(optimizer.steps()) unless the gradient
// norm is not finite. `gradient` is a classifier like `model` (zeros_like(model)).
template <class T, class Optimizer, class LearningRate>
SequenceStep train_sequence_step(SequenceClassifier<T>& model, SequenceClassifier<T>& gradient,
                                 Optimizer& optimizer, const ListOpsBatch& batch,
                                 const SequenceStepOptions& options, LearningRate&& learning_rate) {
  check_clip_norm(options.clip_norm, "SequenceStepOptions::clip_norm");
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  forward.engine = options.engine;
  forward.dropout_key = options.dropout_key;
  EncoderBackwardOptions backward;
  backward.parallel = options.parallel;

  set_zero(gradient);
  SequenceClassifierCache<T> cache;
  const SequenceClassifierOutput<T> out =
      model.forward(batch.tokens, batch.lengths, forward, &cache);
  const CrossEntropy<T> loss = softmax_cross_entropy<T>(out.logits.matrix(), batch.labels);
  model.backward(cache, Tensor<T>::from_matrix(loss.grad_logits), gradient, backward);
  SequenceStep step;
  step.loss = loss.loss;
  for (std::size_t i = 0; i < batch.labels.size(); ++i)
    step.correct += loss.predictions[i] == batch.labels[i];
  step.gradient_norm =
      clipped_gradient_step(model, gradient, optimizer, options.clip_norm, learning_rate);
  step.stepped = std::isfinite(step.gradient_norm);
  return step;
}

struct SequenceEvaluationOptions {
  Index batch_size = 64;
  // Length buckets as numpy.histogram's bins: bucket k holds lengths in [edges[k], edges[k+1]),
  // the last one [edges[n-2], edges[n-1]] with its upper edge. At least two edges, increasing.
  // The default cuts ListOps's default range 128..512 in three.
  std::vector<Index> bucket_edges = {128, 256, 384, 512};
  ParallelOptions parallel;
};

struct LengthBucket {
  Index min_length = 0, max_length = 0;  // both included
  Index examples = 0, correct = 0;
  double loss = 0;  // the mean cross-entropy of its examples (0 when it has none)
  double accuracy() const {
    return examples > 0 ? static_cast<double>(correct) / static_cast<double>(examples) : 0.0;
  }
};

struct SequenceEvaluation {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // the fraction of examples whose largest logit is their label
  Index examples = 0, correct = 0;
  std::vector<Index> predictions;     // per example, in the examples' order
  std::vector<LengthBucket> buckets;  // per bucket of SequenceEvaluationOptions::bucket_edges
  // Examples whose length falls in no bucket (they count in loss and accuracy only).
  Index outside_buckets = 0;
};

namespace detail {

inline void check_sequence_evaluation_options(const SequenceEvaluationOptions& o) {
  require_argument(o.batch_size >= 1, "SequenceEvaluationOptions::batch_size", ">= 1",
                   o.batch_size);
  require_argument(o.bucket_edges.size() >= 2, "SequenceEvaluationOptions::bucket_edges",
                   "at least two edges", concat(o.bucket_edges.size(), " edges"));
  for (std::size_t k = 1; k < o.bucket_edges.size(); ++k)
    require_argument(o.bucket_edges[k] > o.bucket_edges[k - 1],
                     concat("SequenceEvaluationOptions::bucket_edges[", k, "]"),
                     concat("an edge > bucket_edges[", k - 1, "] (", o.bucket_edges[k - 1], ")"),
                     o.bucket_edges[k]);
}

}  // namespace detail

// The buckets of numpy.histogram's bins `edges` (checked as SequenceEvaluationOptions's), empty:
// bucket k holds lengths edges[k] .. edges[k+1] - 1, the last one edges[n-2] .. edges[n-1].
inline std::vector<LengthBucket> length_buckets(const std::vector<Index>& edges) {
  SequenceEvaluationOptions options;
  options.bucket_edges = edges;
  detail::check_sequence_evaluation_options(options);
  std::vector<LengthBucket> buckets;
  for (std::size_t k = 0; k + 1 < edges.size(); ++k)
    buckets.push_back(
        {edges[k], k + 2 == edges.size() ? edges[k + 1] : edges[k + 1] - 1, 0, 0, 0.0});
  return buckets;
}

// Evaluates `model` on `examples` (no cache, no dropout). Batches of batch_size are cut from the
// examples sorted by length (ties in their order), so that little padding is computed; an
// example's logits do not depend on its batch (padding does not reach them) beyond rounding.
template <class T>
SequenceEvaluation evaluate_sequence_classifier(const SequenceClassifier<T>& model,
                                                const std::vector<ListOpsExample>& examples,
                                                const SequenceEvaluationOptions& options = {}) {
  detail::check_sequence_evaluation_options(options);
  const auto n = static_cast<Index>(examples.size());
  const auto length_of = [&](Index i) {
    return static_cast<Index>(examples[static_cast<std::size_t>(i)].tokens.size());
  };
  std::vector<Index> order(examples.size());
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](Index a, Index b) { return length_of(a) < length_of(b); });

  SequenceEvaluation result;
  result.buckets = length_buckets(options.bucket_edges);
  result.predictions.assign(examples.size(), 0);
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  double loss_sum = 0;
  for (Index begin = 0; begin < n; begin += options.batch_size) {
    const std::vector<Index> indices(order.begin() + begin,
                                     order.begin() + std::min(n, begin + options.batch_size));
    const ListOpsBatch batch = listops_batch(gather_first_axis(examples, indices));
    const SequenceClassifierOutput<T> out = model.forward(batch.tokens, batch.lengths, forward);
    const CrossEntropy<T> loss = softmax_cross_entropy<T>(out.logits.matrix(), batch.labels);
    loss_sum += loss.loss * static_cast<double>(indices.size());
    for (std::size_t i = 0; i < indices.size(); ++i) {
      const bool correct = loss.predictions[i] == batch.labels[i];
      result.predictions[static_cast<std::size_t>(indices[i])] = loss.predictions[i];
      result.correct += correct;
      const Index length = batch.lengths[i];
      const auto bucket = std::find_if(
          result.buckets.begin(), result.buckets.end(),
          [&](const LengthBucket& b) { return length >= b.min_length && length <= b.max_length; });
      if (bucket == result.buckets.end()) {
        ++result.outside_buckets;
        continue;
      }
      ++bucket->examples;
      bucket->correct += correct;
      // The example's own cross-entropy, summed here and divided below.
      bucket->loss += softmax_cross_entropy<T>(out.logits.matrix().row(static_cast<Index>(i)),
                                               {batch.labels[i]})
                          .loss;
    }
  }
  result.examples = n;
  if (n > 0) {
    result.loss = loss_sum / static_cast<double>(n);
    result.accuracy = static_cast<double>(result.correct) / static_cast<double>(n);
  }
  for (LengthBucket& bucket : result.buckets)
    if (bucket.examples > 0) bucket.loss /= static_cast<double>(bucket.examples);
  return result;
}

}  // namespace attnlens
