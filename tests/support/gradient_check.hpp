// The suite's finite-difference gradient checker (docs/gradients.md), in double: central
// differences (f(x + h) - f(x - h)) / 2h of a scalar loss, entry by entry, against the gradient a
// backward pass computed. The error of an entry is |analytic - numerical| / max(1, |numerical|):
// absolute on O(1) values, relative on large ones. The acceptance bound is 1e-6.
//
//   double loss() { return (module.forward(x).array() * probe.array()).sum(); }  // probe = dL/dy
//   ATTNLENS_EXPECT_GRADIENT(loss, x.data(), x.size(), dx.data(), 1e-6);
//   testing::expect_parameter_gradients(module, gradient, loss, 1e-6);  // every named parameter
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "attnlens/core/init.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::testing {

// The step of the central differences: the truncation error is O(h^2 f''') ~ 1e-10 and the
// rounding error O(eps f / h) ~ 1e-11 on O(1) values.
inline constexpr double k_gradient_step = 1e-5;

struct GradientCheck {
  Index size = 0;
  double max_error = 0;  // max over entries of |analytic - numerical| / max(1, |numerical|)
  Index worst = -1;
  double worst_analytic = 0, worst_numerical = 0;
  double max_numerical = 0;  // max |numerical|: a check over an all-zero gradient checks little
};

// How many entries of each tensor check_gradient visits: all of them, unless the environment
// variable ATTNLENS_GRADIENT_CHECK_ENTRIES holds a number N > 0. The sanitizer pass of
// scripts/run-tests.sh sets it: it looks for memory errors and undefined behaviour, which every
// code path shows with a few entries per tensor, while the Release passes check every entry's
// value. Unoptimized and instrumented, a full check took about two thirds of that pass.
inline Index gradient_check_entries() {
  const char* text = std::getenv("ATTNLENS_GRADIENT_CHECK_ENTRIES");
  const long value = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
  return value > 0 ? static_cast<Index>(value) : 0;
}

// Perturbs x[0 .. size) one entry at a time (and restores it), comparing analytic[e] with the
// central difference of loss(); with gradient_check_entries() = N < size only N entries spread
// evenly over the tensor, the first and the last among them.
inline GradientCheck check_gradient(const std::function<double()>& loss, double* x, Index size,
                                    const double* analytic, double step = k_gradient_step) {
  GradientCheck c;
  c.size = size;
  const Index limit = gradient_check_entries();
  const Index visits = limit > 1 && limit < size ? limit : size;
  for (Index k = 0; k < visits; ++k) {
    const Index e = visits == size ? k : k * (size - 1) / (visits - 1);
    const double saved = x[e];
    x[e] = saved + step;
    const double up = loss();
    x[e] = saved - step;
    const double down = loss();
    x[e] = saved;
    const double numerical = (up - down) / (2 * step);
    const double error = std::abs(analytic[e] - numerical) / std::max(1.0, std::abs(numerical));
    c.max_numerical = std::max(c.max_numerical, std::abs(numerical));
    if (!(error <= c.max_error)) {  // a NaN is the worst error
      c.max_error = std::isnan(error) ? INFINITY : error;
      c.worst = e;
      c.worst_analytic = analytic[e];
      c.worst_numerical = numerical;
    }
  }
  return c;
}

inline ::testing::AssertionResult gradient_close(const std::string& what, const GradientCheck& c,
                                                 double tol) {
  if (c.max_error <= tol)
    return ::testing::AssertionSuccess() << what << ": max error " << c.max_error;
  return ::testing::AssertionFailure()
         << what << ": gradient entry " << c.worst << " of " << c.size << " is " << c.worst_analytic
         << ", central differences give " << c.worst_numerical << " (error " << c.max_error << " > "
         << tol << ")";
}

#define ATTNLENS_EXPECT_GRADIENT(loss, x, size, analytic, tol) \
  EXPECT_TRUE(::attnlens::testing::gradient_close(             \
      #x, ::attnlens::testing::check_gradient(loss, x, size, analytic), tol))

// Checks every named parameter of `module` against the same-named parameter of `gradient` (a
// module of the same type that its backward pass filled); loss() evaluates the module.
template <template <class> class Module>
void expect_parameter_gradients(Module<double>& module, Module<double>& gradient,
                                const std::function<double()>& loss, double tol = 1e-6) {
  const auto parameters = named_parameters(module), gradients = named_parameters(gradient);
  ASSERT_EQ(parameters.size(), gradients.size());
  for (std::size_t n = 0; n < parameters.size(); ++n) {
    ASSERT_EQ(parameters[n].name, gradients[n].name);
    ASSERT_EQ(parameters[n].size, gradients[n].size);
    EXPECT_TRUE(gradient_close(
        parameters[n].name,
        check_gradient(loss, parameters[n].data, parameters[n].size, gradients[n].data), tol));
  }
}

// Every named parameter of a module (an attached factor's too) moved off its initial value by
// N(0, 0.3^2), so that norms are not at identity nor biases at zero.
template <template <class> class Module>
void perturb_parameters(Module<double>& module, std::uint64_t seed) {
  Rng rng(seed);
  for (const NamedParameter<double>& p : named_parameters(module))
    for (Index e = 0; e < p.size; ++e) p.data[e] += 0.3 * rng.normal<double>();
}

// A tensor of N(0, 1) entries (an input or a probe shaped like an output).
inline Tensor<double> random_normal_tensor(const Shape& shape, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<double> t(shape);
  for (auto& v : t.storage()) v = rng.normal<double>();
  return t;
}

// A fixed random upstream gradient dL/dy (entries N(0, 1)), so that L = sum(dL/dy (*) y).
inline Matrix<double> random_probe(Index rows, Index cols, std::uint64_t seed) {
  Rng rng(seed);
  Matrix<double> probe(rows, cols);
  for (Index e = 0; e < probe.size(); ++e) probe.data()[e] = rng.normal<double>();
  return probe;
}

}  // namespace attnlens::testing
