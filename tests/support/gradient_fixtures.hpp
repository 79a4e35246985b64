// Gradients against PyTorch autograd fixtures (tests/reference/oracles/layers.py and others):
// the tolerance of issue 14 (float: 1e-4 relative, 1e-5 absolute below magnitude 0.1; double:
// 1e-9 relative, 1e-10 absolute below 0.1) and the checks of an input gradient and a gradient
// module against the fixture's `<prefix>grad_input` and `<prefix>grad.<state_dict name>`.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "attnlens/core/parameters.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
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

// Every named parameter of `gradient` (filled by a backward pass) against the fixture tensor
// `<names><name>` (`<case>.grad.` in the layer and mha fixtures, nothing in the model ones),
// read with the module's own loader (which checks the shapes).
template <template <class> class Module, class T>
void expect_parameter_gradients_match(const io::SafeTensors& file, const std::string& names,
                                      Module<T>& gradient) {
  Module<T> expected = zeros_like(gradient);
  io::load_parameters(file, names, expected);
  const auto actual = named_parameters(gradient), wanted = named_parameters(expected);
  ASSERT_EQ(actual.size(), wanted.size());
  for (std::size_t n = 0; n < actual.size(); ++n) {
    SCOPED_TRACE(actual[n].name);
    ATTNLENS_EXPECT_GRADIENT_MATCHES(T,
                                     (Eigen::Map<const Vector<T>>(actual[n].data, actual[n].size)),
                                     (Eigen::Map<const Vector<T>>(wanted[n].data, wanted[n].size)));
  }
}

// A backward pass's input gradient `dx` against `<prefix>grad_input` and its parameter gradients
// as above: what each case of a gradient fixture checks.
template <template <class> class Module, class T>
void expect_gradients_match(const io::SafeTensors& file, const std::string& prefix,
                            const Tensor<T>& dx, Module<T>& gradient) {
  ATTNLENS_EXPECT_GRADIENT_MATCHES(T, dx, file.get<T>(prefix + "grad_input"));
  expect_parameter_gradients_match(file, prefix + "grad.", gradient);
}

// A tensor of tokens (B x L x E, or any rank) as the matrix of its last axis, one token per row.
template <class T>
ConstMatrixMap<T> token_rows(const Tensor<T>& t) {
  const Index features = t.shape().back();
  return ConstMatrixMap<T>(t.data(), t.size() / features, features);
}

}  // namespace attnlens::testing
