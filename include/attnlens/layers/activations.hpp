// Elementwise activations of the feed-forward block, as PyTorch computes them: ReLU,
// exact GELU x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU()), and the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (nn.GELU(approximate="tanh")) (docs/math.md
// section 7.3), and their backward pass (section 6).
#pragma once

#include <cmath>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

enum class Activation { relu, gelu, gelu_tanh };

// The names PyTorch's TransformerEncoderLayer(activation=...) and attnlens's config.json use.
inline constexpr Named<Activation> k_activation_names[] = {
    {Activation::relu, "relu"}, {Activation::gelu, "gelu"}, {Activation::gelu_tanh, "gelu_tanh"}};

inline const char* activation_name(Activation activation) {
  return name_of(k_activation_names, activation);
}

// Inverse of activation_name; throws ArgumentError naming `what` for anything else.
inline Activation activation_from_name(const std::string& name,
                                       const std::string& what = "activation") {
  return value_named(k_activation_names, name, what);
}

namespace detail {

template <class T>
constexpr T k_sqrt1_2 = T(0.70710678118654752440);  // 1 / sqrt(2)
template <class T>
constexpr T k_inv_sqrt_2pi = T(0.39894228040143267794);  // 1 / sqrt(2 pi)
template <class T>
constexpr T k_sqrt_2_over_pi = T(0.79788456080286535588);
template <class T>
constexpr T k_gelu_tanh_cubic = T(0.044715);

// Phi(v), the standard normal distribution function: exact GELU is v Phi(v).
template <class T>
T normal_cdf(T v) {
  return T(0.5) * (T(1) + std::erf(v * k_sqrt1_2<T>));
}

// u(v) = sqrt(2/pi) (v + 0.044715 v^3): the tanh GELU is 0.5 v (1 + tanh(u(v))).
template <class T>
T gelu_tanh_argument(T v) {
  return k_sqrt_2_over_pi<T> * (v + k_gelu_tanh_cubic<T> * v * v * v);
}

}  // namespace detail

// In place: x <- activation(x), elementwise.
template <class T>
void apply_activation(Activation activation, MatrixRef<T> x) {
  switch (activation) {
    case Activation::relu:
      x = x.cwiseMax(T(0));
      return;
    case Activation::gelu:
      x = x.unaryExpr([](T v) { return v * detail::normal_cdf(v); });
      return;
    case Activation::gelu_tanh:
      x = x.unaryExpr(
          [](T v) { return T(0.5) * v * (T(1) + std::tanh(detail::gelu_tanh_argument(v))); });
      return;
  }
}

// The backward pass of apply_activation, in place: dy <- dy (*) activation'(x) with x the
// input of apply_activation, by PyTorch's derivatives: relu's is 0 at x <= 0 (as its
// threshold_backward), exact GELU's Phi(x) + x phi(x), the tanh GELU's that of its own formula.
template <class T>
void activation_backward(Activation activation, ConstMatrixRef<T> pre_activation,
                         MatrixRef<T> dy_in_place) {
  detail::require_matrix(dy_in_place, pre_activation.rows(), pre_activation.cols(),
                         "activation_backward dy");
  auto dy = dy_in_place.array();
  switch (activation) {
    case Activation::relu:
      dy = (pre_activation.array() > T(0)).select(dy, T(0));
      return;
    case Activation::gelu:
      dy *= pre_activation.array().unaryExpr([](T v) {
        return detail::normal_cdf(v) + v * detail::k_inv_sqrt_2pi<T> * std::exp(T(-0.5) * v * v);
      });
      return;
    case Activation::gelu_tanh: {
      const T k = detail::k_sqrt_2_over_pi<T>, c = detail::k_gelu_tanh_cubic<T>;
      dy *= pre_activation.array().unaryExpr([k, c](T v) {
        const T t = std::tanh(detail::gelu_tanh_argument(v));
        return T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * k * (T(1) + T(3) * c * v * v);
      });
      return;
    }
  }
}

}  // namespace attnlens
