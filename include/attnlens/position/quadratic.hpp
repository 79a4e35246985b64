// The quadratic 2-D encoding of Cordonnier et al. (docs/math.md section 3): each head attends
// around a center shift Delta_h with width alpha_h, S_h(i,j) += -alpha_h (|delta - Delta_h|^2
// - |Delta_h|^2); generalized: -1/2 (delta - mu_h)^T Sigma_h^-1 (delta - mu_h).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/relative_grid_term.hpp"

namespace attnlens {

// How reset_parameters draws the isotropic encoding's parameters.
enum class QuadraticInit {
  unit,           // alpha_h = 1, Delta_h ~ N(0, 1)
  // Cordonnier et al.'s code (attention-cnn, GaussianSelfAttention, isotropic): centres
  // ~ N(0, gaussian_init_mu_std^2 = 2^2) and an inverse standard deviation s_h ~ N(1, 0.01^2)
  // per head, whose score -(s_h^2 / 2) |delta - Delta_h|^2 is alpha_h = s_h^2 / 2 here.
  attention_cnn,
};

inline constexpr Named<QuadraticInit> k_quadratic_init_names[] = {
    {QuadraticInit::unit, "unit"}, {QuadraticInit::attention_cnn, "attention-cnn"}};

struct QuadraticEncodingOptions {
  Index num_heads = 1;
  Grid2d queries;
  std::optional<Grid2d> keys = std::nullopt;  // default: the query grid (self-attention)
  QuadraticInit init = QuadraticInit::unit;   // reset_parameters' draw
};

// Isotropic: parameters alpha_h and Delta_h.
template <class T>
class QuadraticEncoding final : public RelativeGridTerm<T> {
 public:
  // QuadraticEncodingOptions::init: alpha = 1 and centres N(0, 1), or attention-cnn's draw.
  void reset_parameters(Rng& rng) override {
    if (init_ == QuadraticInit::unit) {
      alpha.setOnes();
      init::normal(center_shift, rng);
      return;
    }
    for (Index h = 0; h < center_shift.rows(); ++h)
      for (Index c = 0; c < 2; ++c) center_shift(h, c) = rng.normal<T>(T(0), T(2));
    for (Index h = 0; h < alpha.size(); ++h) {
      const T s = rng.normal<T>(T(1), T(0.01));
      alpha[h] = s * s / T(2);
    }
  }
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<QuadraticEncoding>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "alpha", alpha);
    visit(prefix + "center_shift", center_shift);
  }

  // Zero parameters of the right shapes: set or load them.
  explicit QuadraticEncoding(const QuadraticEncodingOptions& options)
      : RelativeGridTerm<T>(options.queries, options.keys.value_or(options.queries)),
        alpha(Vector<T>::Zero(options.num_heads)),
        center_shift(Matrix<T>::Zero(options.num_heads, 2)),
        init_(options.init) {
    detail::require_argument(options.num_heads > 0, "QuadraticEncodingOptions::num_heads", "> 0",
                             options.num_heads);
  }

  Vector<T> alpha;         // H: width (inverse), alpha_h > 0 concentrates the head
  Matrix<T> center_shift;  // H x 2: Delta_h = (row, col) offset the head attends to

 protected:
  void check_parameters(Index heads) const override {
    detail::require_shape(alpha.size() == heads, "QuadraticEncoding alpha",
                          detail::concat(heads, " (one per head)"), detail::concat(alpha.size()));
    detail::require_matrix(center_shift, heads, 2, "QuadraticEncoding center_shift");
  }
  // -alpha (|delta|^2 - 2 Delta.delta), the same as -alpha (|delta - Delta|^2 - |Delta|^2).
  T bias(Index head, Index delta_row, Index delta_col) const override {
    const T dr = static_cast<T>(delta_row), dc = static_cast<T>(delta_col);
    return -alpha[head] *
           (dr * dr + dc * dc - T(2) * (center_shift(head, 0) * dr + center_shift(head, 1) * dc));
  }
  void add_bias_gradients(Index head, Index row0, Index col0, ConstMatrixRef<T> g,
                          KernelFactor<T>& gradient) const override {
    auto& into = *detail::gradient_as<QuadraticEncoding>(&gradient);
    T d_alpha = 0, d_row = 0, d_col = 0;
    for (Index r = 0; r < g.rows(); ++r)
      for (Index c = 0; c < g.cols(); ++c) {
        const T dr = static_cast<T>(row0 + r), dc = static_cast<T>(col0 + c);
        d_alpha -= g(r, c) * (dr * dr + dc * dc -
                              T(2) * (center_shift(head, 0) * dr + center_shift(head, 1) * dc));
        d_row += g(r, c) * dr;
        d_col += g(r, c) * dc;
      }
    into.alpha[head] += d_alpha;
    into.center_shift(head, 0) += T(2) * alpha[head] * d_row;
    into.center_shift(head, 1) += T(2) * alpha[head] * d_col;
  }

 private:
  QuadraticInit init_;
};

// Generalized: parameters mu_h and Sigma_h^-1 (a 2 x 2 matrix stored as a row of 4, row-major).
template <class T>
class GeneralizedQuadraticEncoding final : public RelativeGridTerm<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<GeneralizedQuadraticEncoding>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "center_shift", center_shift);
    visit(prefix + "inverse_covariance", inverse_covariance);
  }

  explicit GeneralizedQuadraticEncoding(const QuadraticEncodingOptions& options)
      : RelativeGridTerm<T>(options.queries, options.keys.value_or(options.queries)),
        center_shift(Matrix<T>::Zero(options.num_heads, 2)),
        inverse_covariance(Matrix<T>::Zero(options.num_heads, 4)) {
    detail::require_argument(options.num_heads > 0, "QuadraticEncodingOptions::num_heads", "> 0",
                             options.num_heads);
  }

  Matrix<T> center_shift;        // H x 2: mu_h
  Matrix<T> inverse_covariance;  // H x 4: Sigma_h^-1 as [s00, s01, s10, s11]

 protected:
  void check_parameters(Index heads) const override {
    detail::require_matrix(center_shift, heads, 2, "GeneralizedQuadraticEncoding center_shift");
    detail::require_matrix(inverse_covariance, heads, 4,
                           "GeneralizedQuadraticEncoding inverse_covariance");
  }
  T bias(Index head, Index delta_row, Index delta_col) const override {
    const T u = static_cast<T>(delta_row) - center_shift(head, 0);
    const T v = static_cast<T>(delta_col) - center_shift(head, 1);
    const auto s = inverse_covariance.row(head);
    return T(-0.5) * (u * (s[0] * u + s[1] * v) + v * (s[2] * u + s[3] * v));
  }
  // With (u, v) = delta - mu: d/dSigma^-1 = -1/2 [u u, u v, v u, v v] and
  // d/dmu = 1/2 (Sigma^-1 + Sigma^-T) (u, v).
  void add_bias_gradients(Index head, Index row0, Index col0, ConstMatrixRef<T> g,
                          KernelFactor<T>& gradient) const override {
    auto& into = *detail::gradient_as<GeneralizedQuadraticEncoding>(&gradient);
    const auto s = inverse_covariance.row(head);
    for (Index r = 0; r < g.rows(); ++r)
      for (Index c = 0; c < g.cols(); ++c) {
        const T w = g(r, c);
        if (w == T(0)) continue;
        const T u = static_cast<T>(row0 + r) - center_shift(head, 0);
        const T v = static_cast<T>(col0 + c) - center_shift(head, 1);
        into.inverse_covariance(head, 0) -= T(0.5) * w * u * u;
        into.inverse_covariance(head, 1) -= T(0.5) * w * u * v;
        into.inverse_covariance(head, 2) -= T(0.5) * w * v * u;
        into.inverse_covariance(head, 3) -= T(0.5) * w * v * v;
        into.center_shift(head, 0) += T(0.5) * w * (T(2) * s[0] * u + (s[1] + s[2]) * v);
        into.center_shift(head, 1) += T(0.5) * w * (T(2) * s[3] * v + (s[1] + s[2]) * u);
      }
  }
};

}  // namespace attnlens
