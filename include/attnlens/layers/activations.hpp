// Elementwise activations of the feed-forward block, as PyTorch computes them: ReLU,
// exact GELU x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU()), and the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (nn.GELU(approximate="tanh")).
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

// In place: x <- activation(x), elementwise.
template <class T>
void apply_activation(Activation activation, MatrixRef<T> x) {
  switch (activation) {
    case Activation::relu:
      x = x.cwiseMax(T(0));
      return;
    case Activation::gelu: {
      const T inv_sqrt2 = T(1) / std::sqrt(T(2));
      x = x.unaryExpr([inv_sqrt2](T v) { return T(0.5) * v * (T(1) + std::erf(v * inv_sqrt2)); });
      return;
    }
    case Activation::gelu_tanh: {
      const T k = std::sqrt(T(2) / T(3.14159265358979323846));
      x = x.unaryExpr(
          [k](T v) { return T(0.5) * v * (T(1) + std::tanh(k * (v + T(0.044715) * v * v * v))); });
      return;
    }
  }
}

}  // namespace attnlens
