// softplus(x) = log(1 + e^x) and its inverse: how attnlens keeps a learned width positive
// (bilateral attention's sigma_h = softplus(rho_h), docs/math.md section 2).
#pragma once

#include <algorithm>
#include <cmath>

#include "attnlens/core/errors.hpp"

namespace attnlens {

// softplus(x) = log(1 + e^x), without overflow for large x.
template <class T>
T softplus(T x) {
  return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x)));
}

// d/dx softplus(x) = 1 / (1 + e^-x), the logistic function.
template <class T>
T softplus_derivative(T x) {
  return x >= T(0) ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}

// The x with softplus(x) = y, for y > 0.
template <class T>
T inverse_softplus(T y) {
  detail::require_argument(y > T(0), "inverse_softplus argument", "> 0", y);
  return y > T(30) ? y : std::log(std::expm1(y));
}

}  // namespace attnlens
