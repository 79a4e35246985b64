// Gradients against PyTorch autograd fixtures (tests/reference/oracles/layers.py and others):
// the tolerance of issue 14 (float: 1e-4 relative, 1e-5 absolute below magnitude 0.1; double:
// 1e-9 relative, 1e-10 absolute below 0.1) and the checks of an input gradient and a gradient
// module against the fixture's `<prefix>grad_input` and `<prefix>grad.<state_dict name>`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "attnlens/core/parameters.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "support/fixtures.hpp"

namespace attnlens::testing {

struct GradientTolerance {
  double relative, absolute;
};

template <class T>
constexpr GradientTolerance gradient_tolerance() {
  return std::is_same_v<T, float> ? GradientTolerance{1e-4, 1e-5} : GradientTolerance{1e-9, 1e-10};
}

#define ATTNLENS_EXPECT_GRADIENT_MATCHES(T, actual, expected)                           \
  ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected,                                      \
                                 ::attnlens::testing::gradient_tolerance<T>().relative, \
                                 ::attnlens::testing::gradient_tolerance<T>().absolute)

// The error that tolerance bounds, in its relative units: the largest |actual - expected| /
// max(absolute / relative, |expected|), i.e. relative above magnitude 0.1 and absolute / 0.1
// below; at most gradient_tolerance<T>().relative where ATTNLENS_EXPECT_GRADIENT_MATCHES passes.
// For reports of the largest error.
template <class T, class A, class E>
double gradient_error(const A& actual, const E& expected) {
  constexpr GradientTolerance tol = gradient_tolerance<T>();
  return static_cast<double>(
      compare(actual, expected, ErrorScale{tol.absolute / tol.relative, 1}).max_error);
}

// Every named parameter of `gradient` (filled by a backward pass) against the fixture tensor
// `<names><name>` (`<case>.grad.` in the layer and mha fixtures, nothing in the model ones),
// read with the module's own loader (which checks the shapes). Returns the largest
// gradient_error.
template <template <class> class Module, class T>
double expect_parameter_gradients_match(const io::SafeTensors& file, const std::string& names,
                                        Module<T>& gradient) {
  Module<T> expected = zeros_like(gradient);
  io::load_parameters(file, names, expected);
  const auto actual = named_parameters(gradient), wanted = named_parameters(expected);
  EXPECT_EQ(actual.size(), wanted.size());
  if (actual.size() != wanted.size()) return NAN;
  double worst = 0;
  for (std::size_t n = 0; n < actual.size(); ++n) {
    SCOPED_TRACE(actual[n].name);
    const Eigen::Map<const Vector<T>> a(actual[n].data, actual[n].size);
    const Eigen::Map<const Vector<T>> e(wanted[n].data, wanted[n].size);
    ATTNLENS_EXPECT_GRADIENT_MATCHES(T, a, e);
    worst = std::max(worst, gradient_error<T>(a, e));
  }
  return worst;
}

// A backward pass's input gradient `dx` against `<prefix>grad_input` and its parameter gradients
// as above: what each case of a gradient fixture checks. Returns the largest gradient_error.
template <template <class> class Module, class T>
double expect_gradients_match(const io::SafeTensors& file, const std::string& prefix,
                              const Tensor<T>& dx, Module<T>& gradient) {
  const Tensor<T> expected = file.get<T>(prefix + "grad_input");
  ATTNLENS_EXPECT_GRADIENT_MATCHES(T, dx, expected);
  return std::max(gradient_error<T>(dx, expected),
                  expect_parameter_gradients_match(file, prefix + "grad.", gradient));
}

// An I64 tensor of the fixture (labels, lengths, token ids) as Index values, in storage order.
inline std::vector<Index> fixture_indices(const io::SafeTensors& file, const std::string& name) {
  const Tensor<std::int64_t> t = file.get<std::int64_t>(name);
  return std::vector<Index>(t.storage().begin(), t.storage().end());
}

// A classifier's training loss against a fixture of oracles/gradients.py or oracles/sequence.py:
// `logits` against `<prefix>logits` and their mean cross-entropy on `<prefix>labels` against
// `<prefix>loss`, at the gradient tolerance. Writes "<prefix> largest error (...): loss e,
// logits e" to `report` and returns the cross-entropy, whose grad_logits the backward pass takes.
template <class T>
CrossEntropy<T> expect_training_loss_matches(const io::SafeTensors& file, const std::string& prefix,
                                             const Tensor<T>& logits, std::ostream& report) {
  const Tensor<T> expected_logits = file.get<T>(prefix + "logits");
  ATTNLENS_EXPECT_GRADIENT_MATCHES(T, logits, expected_logits);
  CrossEntropy<T> loss =
      softmax_cross_entropy<T>(logits.matrix(), fixture_indices(file, prefix + "labels"));
  const Vector<T> loss_value = Vector<T>::Constant(1, static_cast<T>(loss.loss));
  const Tensor<T> expected_loss = file.get<T>(prefix + "loss");
  ATTNLENS_EXPECT_GRADIENT_MATCHES(T, loss_value, expected_loss.matrix());
  report << prefix << " largest error (|a - e| / max(0.1, |e|)): loss "
         << gradient_error<T>(loss_value, expected_loss.matrix()) << ", logits "
         << gradient_error<T>(logits, expected_logits);
  return loss;
}

// A tensor of tokens (B x L x E, or any rank) as the matrix of its last axis, one token per row.
template <class T>
ConstMatrixMap<T> token_rows(const Tensor<T>& t) {
  const Index features = t.shape().back();
  return ConstMatrixMap<T>(t.data(), t.size() / features, features);
}

}  // namespace attnlens::testing
