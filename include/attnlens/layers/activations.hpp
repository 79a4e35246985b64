// Elementwise activations of the feed-forward block, as PyTorch computes them: ReLU,
// exact GELU x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU()), and the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (nn.GELU(approximate="tanh")) (docs/math.md
// section 7.3), and their backward pass (section 6).
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "attnlens/core/detail/vector_math_avx512.hpp"
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

// Phi(v), the standard normal distribution function: exact GELU is v Phi(v). Written with
// erfc, not 1 + erf (PyTorch's form), so that Phi keeps its relative accuracy where it is tiny
// (1 + erf(-8.5) is 0 in float, erfc(8.5) is 2e-33); elsewhere the two agree to rounding.
template <class T>
T normal_cdf(T v) {
  return T(0.5) * std::erfc(-v * k_sqrt1_2<T>);
}

// u(v) = sqrt(2/pi) (v + 0.044715 v^3): the tanh GELU is 0.5 v (1 + tanh(u(v))).
template <class T>
T gelu_tanh_argument(T v) {
  return k_sqrt_2_over_pi<T> * (v + k_gelu_tanh_cubic<T> * v * v * v);
}

#if ATTNLENS_HAS_AVX512_KERNELS
namespace avx512 {

// Exact GELU on 16 floats and its derivative, through erfc (vector_math_avx512.hpp):
// x Phi(x) = x erfc(-x / sqrt 2) / 2 keeps its relative accuracy where Phi is tiny (x << 0),
// which 1 + erf would lose. With std::erf this was a fifth of a small ViT's training step.
ATTNLENS_AVX512 inline __m512 normal_cdf(__m512 x) {
  return _mm512_mul_ps(_mm512_set1_ps(0.5f),
                       erfc(_mm512_mul_ps(x, _mm512_set1_ps(-k_sqrt1_2<float>))));
}

ATTNLENS_AVX512 inline __m512 gelu(__m512 x) { return _mm512_mul_ps(x, normal_cdf(x)); }

// Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
ATTNLENS_AVX512 inline __m512 gelu_derivative(__m512 x) {
  const __m512 density =
      _mm512_mul_ps(_mm512_set1_ps(k_inv_sqrt_2pi<float>),
                    exp_nonpositive(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(x, x))));
  return _mm512_fmadd_ps(x, density, normal_cdf(x));
}

// x <- gelu(x) on every entry; x row-major with stride ld.
ATTNLENS_AVX512 inline void gelu_in_place(float* x, Index rows, Index cols, Index ld) {
  for (Index r = 0; r < rows; ++r, x += ld)
    for (Index c = 0; c < cols; c += 16) {
      const __mmask16 m = tail_mask(cols - c);
      _mm512_mask_storeu_ps(x + c, m, gelu(_mm512_maskz_loadu_ps(m, x + c)));
    }
}

// dy <- dy (*) gelu'(x).
ATTNLENS_AVX512 inline void gelu_backward_in_place(const float* x, Index ldx, float* dy, Index rows,
                                                   Index cols, Index ldy) {
  for (Index r = 0; r < rows; ++r, x += ldx, dy += ldy)
    for (Index c = 0; c < cols; c += 16) {
      const __mmask16 m = tail_mask(cols - c);
      const __m512 d = gelu_derivative(_mm512_maskz_loadu_ps(m, x + c));
      _mm512_mask_storeu_ps(dy + c, m, _mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, dy + c)));
    }
}

}  // namespace avx512
#endif

// Whether exact GELU on T runs on the AVX-512 path.
template <class T>
bool vector_gelu() {
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>) return use_avx512();
#endif
  return false;
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
#if ATTNLENS_HAS_AVX512_KERNELS
      if constexpr (std::is_same_v<T, float>)
        if (detail::vector_gelu<T>())
          return detail::avx512::gelu_in_place(x.data(), x.rows(), x.cols(), x.outerStride());
#endif
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
#if ATTNLENS_HAS_AVX512_KERNELS
      if constexpr (std::is_same_v<T, float>)
        if (detail::vector_gelu<T>())
          return detail::avx512::gelu_backward_in_place(
              pre_activation.data(), pre_activation.outerStride(), dy_in_place.data(),
              dy_in_place.rows(), dy_in_place.cols(), dy_in_place.outerStride());
#endif
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
