// Linear<T>: y = x W^T + b, torch.nn.Linear with its parameter names and layout
// (weight is out_features x in_features, bias has out_features entries or none), and its
// backward pass (docs/math.md sections 6 and 7.1).
#pragma once

#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct LinearOptions {
  Index in_features = 0;
  Index out_features = 0;
  bool bias = true;
};

template <class T>
class Linear {
 public:
  Linear() = default;

  // Zero weights and bias of the given sizes; load or initialise them afterwards.
  explicit Linear(const LinearOptions& options)
      : weight(Matrix<T>::Zero(options.out_features, options.in_features)),
        bias(options.bias ? Vector<T>::Zero(options.out_features) : Vector<T>()) {
    detail::require_argument(options.in_features > 0, "LinearOptions::in_features", "> 0",
                             options.in_features);
    detail::require_argument(options.out_features > 0, "LinearOptions::out_features", "> 0",
                             options.out_features);
  }

  // nn.Linear's default initialisation.
  Linear(const LinearOptions& options, Rng& rng) : Linear(options) { reset_parameters(rng); }

  void reset_parameters(Rng& rng) {
    init::linear_uniform(weight, in_features(), rng);
    init::linear_uniform(bias, in_features(), rng);
  }

  Index in_features() const { return weight.cols(); }
  Index out_features() const { return weight.rows(); }
  bool has_bias() const { return bias.size() != 0; }

  // y (n x out) = x (n x in) W^T + b.
  // Rows are split across the threads of `parallel`.
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, const ParallelOptions& parallel = {}) const {
    check(x.cols(), "Linear input", "columns");
    detail::require_matrix(y, x.rows(), out_features(), "Linear output");
    parallel_product_transposed<T>(x, weight, y, parallel);
    if (has_bias()) y.rowwise() += bias.transpose();
  }

  Matrix<T> forward(ConstMatrixRef<T> x, const ParallelOptions& parallel = {}) const {
    Matrix<T> y(x.rows(), out_features());
    forward(x, y, parallel);
    return y;
  }

  // The backward pass of forward(x) given dy = dL/dy (n x out): returns dx = dy W (n x in) and
  // accumulates dL/dW += dy^T x and dL/db += the column sums of dy into `gradient` (a module of
  // the same shape, zeros_like(*this) for a first micro-batch). Products on `parallel`'s threads.
  Matrix<T> backward(ConstMatrixRef<T> x, ConstMatrixRef<T> dy, Linear<T>& gradient,
                     const ParallelOptions& parallel = {}) const {
    check(x.cols(), "Linear backward x", "columns");
    detail::require_matrix(dy, x.rows(), out_features(), "Linear backward dy");
    detail::require_matrix(gradient.weight, out_features(), in_features(),
                           "Linear backward gradient.weight");
    detail::require_shape(gradient.bias.size() == bias.size(), "Linear backward gradient.bias",
                          detail::concat("[", bias.size(), "]"),
                          detail::concat("[", gradient.bias.size(), "]"));
    parallel_add_transposed_product<T>(dy, x, gradient.weight, parallel);
    if (has_bias()) gradient.bias += dy.colwise().sum().transpose();
    Matrix<T> dx(x.rows(), in_features());
    parallel_product<T>(dy, weight, dx, parallel);
    return dx;
  }

  // Checks the parameter shapes (after loading them from a file, say).
  void check_parameters(const std::string& name) const {
    if (has_bias())
      detail::require_shape(bias.size() == out_features(), name + ".bias",
                            detail::concat("[", out_features(), "]"),
                            detail::concat("[", bias.size(), "]"));
  }

  Matrix<T> weight;  // out_features x in_features
  Vector<T> bias;    // out_features, or empty for no bias

 private:
  void check(Index in, const char* what, const char* axis) const {
    if (in != in_features())
      throw ShapeError(detail::concat(what, ": expected ", in_features(), " ", axis, ", got ", in));
  }
};

// Calls f(name, parameter) for each parameter (a Matrix<T>& or Vector<T>&) under its PyTorch
// state_dict name after `prefix`; loaders and exporters walk a model through these overloads.
template <class T, class F>
void for_each_parameter(Linear<T>& linear, const std::string& prefix, F&& f) {
  f(prefix + "weight", linear.weight);
  if (linear.has_bias()) f(prefix + "bias", linear.bias);
}

}  // namespace attnlens
