// LayerNorm<T>: torch.nn.LayerNorm over the last axis (one token per row):
// y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance of the row,
// with PyTorch's parameter names (weight, bias) and its eps / elementwise_affine options, and
// its backward pass (docs/math.md sections 6 and 7.2).
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct LayerNormOptions {
  Index normalized_shape = 0;  // features per row (PyTorch's last-axis normalized_shape)
  double eps = 1e-5;
  bool elementwise_affine = true;  // weight and bias; without them y is the normalized x
};

// What a backward pass needs: the normalized rows and 1 / sqrt(var + eps) per row.
template <class T>
struct LayerNormCache {
  Matrix<T> normalized;  // n x features, before weight and bias
  Vector<T> inv_std;     // n
};

template <class T>
class LayerNorm {
 public:
  LayerNorm() = default;

  // PyTorch's initial values: weight 1, bias 0.
  explicit LayerNorm(const LayerNormOptions& options)
      : eps_(options.eps), features_(options.normalized_shape) {
    detail::require_argument(options.normalized_shape > 0, "LayerNormOptions::normalized_shape",
                             "> 0", options.normalized_shape);
    detail::require_argument(options.eps > 0 && std::isfinite(options.eps), "LayerNormOptions::eps",
                             "a finite value > 0", options.eps);
    if (options.elementwise_affine) {
      weight = Vector<T>::Ones(features_);
      bias = Vector<T>::Zero(features_);
    }
  }

  Index normalized_shape() const { return features_; }
  double eps() const { return eps_; }
  bool elementwise_affine() const { return weight.size() != 0; }

  // y = LayerNorm(x) row by row; y may be x itself (in place).
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, LayerNormCache<T>* cache = nullptr) const {
    if (x.cols() != features_)
      throw ShapeError(
          detail::concat("LayerNorm input: expected ", features_, " columns, got ", x.cols()));
    detail::require_matrix(y, x.rows(), features_, "LayerNorm output");
    if (cache) {
      cache->normalized.resize(x.rows(), features_);
      cache->inv_std.resize(x.rows());
    }
    for (Index i = 0; i < x.rows(); ++i) {
      // In double: a float row with a large common offset (|mean| >> std) would otherwise
      // lose most of the digits of x - mean. The cost is O(features) per row, beside GEMMs.
      const Eigen::ArrayXd row = x.row(i).transpose().template cast<double>().array();
      const double mean = row.mean();
      const double inv_std = 1.0 / std::sqrt((row - mean).square().mean() + eps_);
      y.row(i) = ((row - mean) * inv_std).template cast<T>().matrix().transpose();
      if (cache) {
        cache->normalized.row(i) = y.row(i);
        cache->inv_std[i] = static_cast<T>(inv_std);
      }
      if (elementwise_affine())
        y.row(i) = y.row(i).cwiseProduct(weight.transpose()) + bias.transpose();
    }
  }

  Matrix<T> forward(ConstMatrixRef<T> x, LayerNormCache<T>* cache = nullptr) const {
    Matrix<T> y(x.rows(), x.cols());
    forward(x, y, cache);
    return y;
  }

  // The backward pass of forward(x, y, &cache) given dy = dL/dy (docs/math.md section 6):
  // returns dx = (dxhat - mean(dxhat) - xhat (*) mean(dxhat (*) xhat)) / sigma per row, with
  // xhat the normalized row and dxhat = weight (*) dy, and accumulates dL/dweight += the column
  // sums of dy (*) xhat and dL/dbias += those of dy into `gradient`. In double, as the forward's
  // statistics: dxhat - mean(dxhat) cancels digits when dy has a large common part.
  Matrix<T> backward(const LayerNormCache<T>& cache, ConstMatrixRef<T> dy,
                     LayerNorm<T>& gradient) const {
    const Index n = cache.normalized.rows();
    detail::require_matrix(cache.normalized, n, features_, "LayerNorm backward cache.normalized");
    detail::require_shape(cache.inv_std.size() == n, "LayerNorm backward cache.inv_std",
                          detail::concat("[", n, "]"),
                          detail::concat("[", cache.inv_std.size(), "]"));
    detail::require_matrix(dy, n, features_, "LayerNorm backward dy");
    const auto parameters = [](const LayerNorm<T>& m) {
      return detail::concat("weight [", m.weight.size(), "], bias [", m.bias.size(), "]");
    };
    detail::require_shape(
        gradient.weight.size() == weight.size() && gradient.bias.size() == bias.size(),
        "LayerNorm backward gradient", parameters(*this), parameters(gradient));
    const Eigen::ArrayXd w = elementwise_affine() ? Eigen::ArrayXd(weight.template cast<double>())
                                                  : Eigen::ArrayXd::Ones(features_);
    Eigen::ArrayXd dweight = Eigen::ArrayXd::Zero(features_), dbias = dweight;
    Matrix<T> dx(n, features_);
    for (Index i = 0; i < n; ++i) {
      const Eigen::ArrayXd g = dy.row(i).transpose().template cast<double>().array();
      const Eigen::ArrayXd xhat =
          cache.normalized.row(i).transpose().template cast<double>().array();
      // mean(dxhat (*) xhat) taken of the centered dxhat: equal, as mean(xhat) = 0, but a common
      // part of dxhat then drops out exactly instead of through mean(xhat), which the cache's
      // rounding leaves at 1e-8 in float.
      const Eigen::ArrayXd centered = w * g - (w * g).mean();
      const Eigen::ArrayXd row =
          static_cast<double>(cache.inv_std[i]) * (centered - xhat * (centered * xhat).mean());
      dx.row(i) = row.template cast<T>().matrix().transpose();
      dweight += g * xhat;
      dbias += g;
    }
    if (elementwise_affine()) {
      gradient.weight += dweight.template cast<T>().matrix();
      gradient.bias += dbias.template cast<T>().matrix();
    }
    return dx;
  }

  // Throws ShapeError naming `name`.weight or `name`.bias when a loaded parameter does not fit.
  void check_parameters(const std::string& name) const {
    if (!elementwise_affine()) return;
    for (const auto& [p, suffix] : {std::pair{&weight, ".weight"}, std::pair{&bias, ".bias"}})
      detail::require_shape(p->size() == features_, name + suffix,
                            detail::concat("[", features_, "]"),
                            detail::concat("[", p->size(), "]"));
  }

  Vector<T> weight;  // normalized_shape, or empty without elementwise_affine
  Vector<T> bias;    // normalized_shape, or empty without elementwise_affine

 private:
  double eps_ = 1e-5;
  Index features_ = 0;
};

template <class T, class F>
void for_each_parameter(LayerNorm<T>& norm, const std::string& prefix, F&& f) {
  if (!norm.elementwise_affine()) return;
  f(prefix + "weight", norm.weight);
  f(prefix + "bias", norm.bias);
}

}  // namespace attnlens
