// SequenceClassifier (blocks/sequence_classifier.hpp): the backward pass against central
// differences in double with padding present (softmax, bilateral with Gaussian and Laplacian
// distance kernels, T5, Shaw and RoPE relative positions, learned and sinusoidal absolute
// positions, both poolings, the fidelity residual, NeuTRENO); logits, loss and every gradient
// against PyTorch autograd (tests/reference/oracles/sequence.py, grad_sequence_classifier);
// padding that does not reach the logits; the state_dict names; bad input.
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#include "attnlens/blocks/sequence_classifier.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "support/blocks.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// Vocabulary 7 (0 pads), width 4, 2 heads, 2 GELU layers (central differences across a ReLU's
// kink would not be a derivative), 3 classes: about 350 parameters, each differenced twice.
SequenceClassifierOptions small_sequence_classifier() {
  SequenceClassifierOptions o;
  o.vocab_size = 7;
  o.num_classes = 3;
  o.padding_idx = 0;
  o.encoder.layer.d_model = 4;
  o.encoder.layer.nhead = 2;
  o.encoder.layer.dim_feedforward = 6;
  o.encoder.layer.activation = Activation::gelu;
  o.encoder.num_layers = 2;
  return o;
}

// B = 3, L = 6, lengths 6, 4, 2: ids 1..6 on the real tokens, padding 0 after them.
struct SequenceBatch {
  Tensor<Index> tokens{Shape{3, 6}};
  std::vector<Index> lengths{6, 4, 2};
};

SequenceBatch small_sequence_batch() {
  SequenceBatch batch;
  batch.tokens.storage() = {3, 1, 4, 1, 5, 6, 2, 6, 5, 3, 0, 0, 5, 2, 0, 0, 0, 0};
  return batch;
}

void expect_sequence_classifier_gradients(const std::string& what,
                                          const SequenceClassifierOptions& options) {
  SCOPED_TRACE(what);
  SequenceClassifier<double> model(options);
  testing::perturb_parameters(model, 21);
  const SequenceBatch batch = small_sequence_batch();
  const std::vector<Index> labels{2, 0, 1};
  const auto loss = [&] {
    return softmax_cross_entropy<double>(model.forward(batch.tokens, batch.lengths).logits.matrix(),
                                         labels)
        .loss;
  };
  SequenceClassifierCache<double> cache;
  const auto out = model.forward(batch.tokens, batch.lengths, {}, &cache);
  const CrossEntropy<double> ce = softmax_cross_entropy<double>(out.logits.matrix(), labels);
  SequenceClassifier<double> gradient = zeros_like(model);
  model.backward(cache, Tensor<double>::from_matrix(ce.grad_logits), gradient);
  // The padding row (id 0 occurs only on padding) has no gradient, nor would a difference see
  // one: padding does not reach the loss.
  EXPECT_TRUE(gradient.embedding.weight.row(0).isZero(0));
  testing::expect_parameter_gradients(model, gradient, loss);
}

TEST(SequenceClassifierBackward, SoftmaxMatchesDifferences) {
  SequenceClassifierOptions o = small_sequence_classifier();
  expect_sequence_classifier_gradients("softmax, post-norm, mean pooling", o);
  o.encoder.layer.norm_first = true;
  o.encoder.final_norm = true;
  o.pooling = SequencePooling::first;
  o.encoder.position.type = PositionType::learned;
  o.encoder.position.max_len = 8;
  expect_sequence_classifier_gradients("softmax, pre-norm, final norm, first token, learned", o);
}

TEST(SequenceClassifierBackward, BilateralDistanceKernelsMatchDifferences) {
  SequenceClassifierOptions o = small_sequence_classifier();
  o.encoder.layer.attention.type = AttentionVariantType::bilateral;
  expect_sequence_classifier_gradients("bilateral gaussian", o);
  o.encoder.layer.attention.domain.type = DistanceKernelType::laplacian;
  o.encoder.layer.attention.sigma_init = 2.0;
  o.encoder.layer.norm_first = true;
  o.encoder.position.type = PositionType::sinusoidal;
  o.encoder.residual.type = ResidualType::fidelity;
  o.encoder.residual.learned = true;
  expect_sequence_classifier_gradients("bilateral laplacian, sinusoidal, learned fidelity", o);
}

TEST(SequenceClassifierBackward, RelativePositionsMatchDifferences) {
  SequenceClassifierOptions o = small_sequence_classifier();
  o.encoder.position.type = PositionType::t5;
  o.encoder.position.num_buckets = 8;
  o.encoder.position.max_distance = 6;
  expect_sequence_classifier_gradients("t5", o);
  o.encoder.position = {};
  o.encoder.position.type = PositionType::shaw;
  o.encoder.position.max_relative_position = 3;
  o.pooling = SequencePooling::first;
  expect_sequence_classifier_gradients("shaw, first token", o);
  o.encoder.position = {};
  o.encoder.position.type = PositionType::rope;
  o.encoder.layer.attention.type = AttentionVariantType::bilateral;
  expect_sequence_classifier_gradients("rope, bilateral", o);
  o.encoder.position = {};
  o.encoder.layer.attention.type = AttentionVariantType::neutreno;
  expect_sequence_classifier_gradients("neutreno", o);
}

// The logits of `model` on `batch`, and on the same sequences with other ids on the padding and
// with 5 more positions of padding: equal within float rounding.
void expect_padding_invariance(const std::string& what, const SequenceClassifierOptions& options) {
  SCOPED_TRACE(what);
  Rng rng(31);
  const SequenceClassifier<float> model(options, rng);
  const SequenceBatch batch = small_sequence_batch();
  const Tensor<float> logits = model.forward(batch.tokens, batch.lengths).logits;

  SequenceBatch other = batch;
  for (Index b = 0; b < 3; ++b)
    for (Index j = batch.lengths[static_cast<std::size_t>(b)]; j < 6; ++j)
      other.tokens.at({b, j}) = 1 + (b + j) % 6;
  ATTNLENS_EXPECT_RELATIVE_CLOSE(model.forward(other.tokens, other.lengths).logits, logits, 1e-5,
                                 1e-5);

  SequenceBatch longer = batch;
  longer.tokens = Tensor<Index>({3, 11});
  for (Index b = 0; b < 3; ++b)
    for (Index j = 0; j < 6; ++j) longer.tokens.at({b, j}) = batch.tokens.at({b, j});
  ATTNLENS_EXPECT_RELATIVE_CLOSE(model.forward(longer.tokens, longer.lengths).logits, logits, 1e-5,
                                 1e-5);
  // The cached (reference engine) forward agrees too.
  SequenceClassifierCache<float> cache;
  ATTNLENS_EXPECT_RELATIVE_CLOSE(model.forward(longer.tokens, longer.lengths, {}, &cache).logits,
                                 logits, 1e-5, 1e-5);
}

TEST(SequenceClassifier, PaddingDoesNotReachTheLogits) {
  SequenceClassifierOptions o = small_sequence_classifier();
  expect_padding_invariance("softmax, mean", o);
  o.pooling = SequencePooling::first;
  o.encoder.position.type = PositionType::learned;
  o.encoder.position.max_len = 11;
  expect_padding_invariance("learned positions, first token", o);
  o.pooling = SequencePooling::mean;
  o.encoder.position = {};
  o.encoder.position.type = PositionType::sinusoidal;
  o.encoder.layer.attention.type = AttentionVariantType::bilateral;
  o.encoder.residual.type = ResidualType::fidelity;
  o.encoder.residual.lambda = {0.3, 0.5};
  expect_padding_invariance("sinusoidal, bilateral, fidelity", o);
  o.encoder.position = {};
  o.encoder.position.type = PositionType::alibi;
  o.encoder.residual = {};
  for (AttentionVariantType type :
       {AttentionVariantType::kde, AttentionVariantType::robust_kde, AttentionVariantType::fourier,
        AttentionVariantType::elliptical, AttentionVariantType::neutreno}) {
    o.encoder.layer.attention = {};
    o.encoder.layer.attention.type = type;
    expect_padding_invariance(std::string("alibi, ") + attention_variant_name(type), o);
  }
}

TEST(SequenceClassifier, NamesItsParametersAsTheTorchModule) {
  SequenceClassifierOptions o = small_sequence_classifier();
  o.encoder.final_norm = true;
  o.encoder.position.type = PositionType::learned;
  o.encoder.position.max_len = 8;
  SequenceClassifier<float> model(o);
  std::vector<std::string> names;
  for (const auto& p : named_parameters(model)) names.push_back(p.name);
  const std::vector<std::string> expected{"embedding.weight",
                                          "encoder.layers.0.self_attn.in_proj_weight",
                                          "encoder.layers.0.self_attn.in_proj_bias",
                                          "encoder.layers.0.self_attn.out_proj.weight",
                                          "encoder.layers.0.self_attn.out_proj.bias",
                                          "encoder.layers.0.linear1.weight",
                                          "encoder.layers.0.linear1.bias",
                                          "encoder.layers.0.linear2.weight",
                                          "encoder.layers.0.linear2.bias",
                                          "encoder.layers.0.norm1.weight",
                                          "encoder.layers.0.norm1.bias",
                                          "encoder.layers.0.norm2.weight",
                                          "encoder.layers.0.norm2.bias",
                                          "encoder.layers.1.self_attn.in_proj_weight",
                                          "encoder.layers.1.self_attn.in_proj_bias",
                                          "encoder.layers.1.self_attn.out_proj.weight",
                                          "encoder.layers.1.self_attn.out_proj.bias",
                                          "encoder.layers.1.linear1.weight",
                                          "encoder.layers.1.linear1.bias",
                                          "encoder.layers.1.linear2.weight",
                                          "encoder.layers.1.linear2.bias",
                                          "encoder.layers.1.norm1.weight",
                                          "encoder.layers.1.norm1.bias",
                                          "encoder.layers.1.norm2.weight",
                                          "encoder.layers.1.norm2.bias",
                                          "encoder.norm.weight",
                                          "encoder.norm.bias",
                                          "encoder.position_embeddings.weight",
                                          "head.weight",
                                          "head.bias"};
  EXPECT_EQ(names, expected);
  // Initialisation: nn.Embedding's zero padding row, nn.Linear's head.
  Rng rng(2);
  model.reset_parameters(rng);
  EXPECT_TRUE(model.embedding.weight.row(0).isZero(0));
  EXPECT_FALSE(model.embedding.weight.row(1).isZero(0));
  EXPECT_FALSE(model.head.bias.isZero(0));
}

TEST(SequenceClassifier, BadInputIsNamed) {
  const auto options_error = [](auto spoil, const std::string& message) {
    SequenceClassifierOptions o = small_sequence_classifier();
    spoil(o);
    expect_error_naming<ArgumentError>([&] { (void)SequenceClassifier<float>(o); }, message);
  };
  options_error([](auto& o) { o.num_classes = 0; },
                "SequenceClassifierOptions::num_classes: expected > 0, got 0");
  options_error([](auto& o) { o.vocab_size = 0; }, "SequenceClassifierOptions::vocab_size");
  options_error([](auto& o) { o.padding_idx = 7; },
                "SequenceClassifierOptions::padding_idx: expected an id in [0, 7) or none, got 7");
  options_error([](auto& o) { o.encoder.layer.d_model = 0; },
                "SequenceClassifierOptions::encoder.layer.d_model: expected > 0, got 0");
  options_error([](auto& o) { o.encoder.num_layers = 0; }, "EncoderOptions::num_layers");

  Rng rng(3);
  const SequenceClassifier<float> model(small_sequence_classifier(), rng);
  SequenceBatch batch = small_sequence_batch();
  batch.tokens.at({1, 3}) = 9;
  expect_error_naming<ArgumentError>([&] { model.forward(batch.tokens, batch.lengths); },
                                     "tokens[1, 3]: expected an id in [0, 7), got 9");
  batch.tokens.at({1, 3}) = -2;
  expect_error_naming<ArgumentError>([&] { model.forward(batch.tokens, batch.lengths); },
                                     "tokens[1, 3]: expected an id in [0, 7), got -2");
  batch = small_sequence_batch();
  batch.lengths[2] = 0;  // a row of padding only: no mean to pool
  expect_error_naming<ArgumentError>(
      [&] { model.forward(batch.tokens, batch.lengths); },
      "lengths[2]: expected a length in [1, 6] (a sequence needs a token that is not padding), "
      "got 0");
  batch.lengths[2] = 7;
  expect_error_naming<ArgumentError>([&] { model.forward(batch.tokens, batch.lengths); },
                                     "lengths[2]");
  batch.lengths = {6, 4};
  expect_error_naming<ShapeError>([&] { model.forward(batch.tokens, batch.lengths); },
                                  "lengths: expected 3 entries, one per row of tokens, got 2");
  expect_error_naming<ShapeError>([&] { model.forward(Tensor<Index>({6}), {6}); },
                                  "tokens: expected [B, L] with B, L >= 1, got [6]");
  expect_error_naming<ShapeError>([&] { model.forward(Tensor<Index>({0, 6}), {}); }, "tokens");

  // Positions past a learned table.
  SequenceClassifierOptions learned = small_sequence_classifier();
  learned.encoder.position.type = PositionType::learned;
  learned.encoder.position.max_len = 4;
  const SequenceClassifier<float> short_table(learned, rng);
  batch = small_sequence_batch();
  EXPECT_THROW(short_table.forward(batch.tokens, batch.lengths), std::invalid_argument);

  SequenceClassifierCache<float> cache;
  model.forward(batch.tokens, batch.lengths, {}, &cache);
  SequenceClassifier<float> gradient = zeros_like(model);
  expect_error_naming<ShapeError>(
      [&] {
        model.backward(cache, Tensor<float>({3, 4}), gradient);
      },
      "dlogits: expected [3, 3], got [3, 4]");
  expect_error_naming<ArgumentError>(
      [&] {
        model.backward({}, Tensor<float>({3, 3}), gradient);
      },
      "SequenceClassifierCache");
}

// grad_sequence_classifier: nn.Embedding, nn.TransformerEncoder, masked mean or first token,
// nn.Linear under F.cross_entropy. Tolerance: float 1e-4 relative, 1e-5 absolute below
// magnitude 0.1; double 1e-9, 1e-10 (support/gradient_fixtures.hpp): the float fixture is
// PyTorch in float32, so both sides carry float rounding of O(1e-7) through a few layers.
template <class T>
void check_sequence_classifier_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("grad_sequence_classifier");
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    SequenceClassifierOptions o;
    o.vocab_size = c["vocab_size"];
    o.num_classes = c["num_classes"];
    if (c["padding_idx"].is_number()) o.padding_idx = c["padding_idx"].template get<Index>();
    o.encoder = testing::encoder_options(c);
    o.encoder.position.type = position_type_from_name(c["position"]);
    o.encoder.position.max_len = c["max_len"];
    o.pooling = c["pooling"] == "first" ? SequencePooling::first : SequencePooling::mean;
    SequenceClassifier<T> model(o);
    io::load_parameters(file, prefix, model);
    const std::vector<Index> ids = testing::fixture_indices(file, prefix + "tokens");
    Tensor<Index> tokens(file.get<std::int64_t>(prefix + "tokens").shape());
    std::copy(ids.begin(), ids.end(), tokens.storage().begin());

    SequenceClassifierCache<T> cache;
    const auto out =
        model.forward(tokens, testing::fixture_indices(file, prefix + "lengths"), {}, &cache);
    const CrossEntropy<T> loss =
        testing::expect_training_loss_matches(file, prefix, out.logits, std::cout);
    SequenceClassifier<T> gradient = zeros_like(model);
    model.backward(cache, Tensor<T>::from_matrix(loss.grad_logits), gradient);
    std::cout << ", gradients "
              << testing::expect_parameter_gradients_match(file, prefix + "grad.", gradient)
              << "\n";
  });
  EXPECT_EQ(checked, 3);
}

TEST(SequenceClassifierBackward, MatchesPyTorchAutogradFloat) {
  check_sequence_classifier_against_pytorch<float>();
}
TEST(SequenceClassifierBackward, MatchesPyTorchAutogradDouble) {
  check_sequence_classifier_against_pytorch<double>();
}

}  // namespace
}  // namespace attnlens
