// FeedForward<T>: the position-wise block of a transformer layer,
// y = linear2(activation(linear1(x))), with the names of torch.nn.TransformerEncoderLayer
// (linear1: d_model -> dim_feedforward, linear2: dim_feedforward -> d_model), and its backward
// pass (docs/math.md sections 6 and 7.4).
#pragma once

#include <string>
#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/layers/activations.hpp"
#include "attnlens/layers/dropout.hpp"
#include "attnlens/layers/linear.hpp"

namespace attnlens {

struct FeedForwardOptions {
  Index d_model = 0;
  Index dim_feedforward = 2048;  // PyTorch's TransformerEncoderLayer default
  Activation activation = Activation::relu;
  bool bias = true;  // linear1.bias and linear2.bias
};

// What a backward pass needs: linear1's output before the activation, linear2's input, and the
// dropout drawn between them.
template <class T>
struct FeedForwardCache {
  Matrix<T> pre_activation;  // n x dim_feedforward
  Matrix<T> hidden;          // n x dim_feedforward: after the activation and the dropout
  Dropout hidden_dropout = {};
};

// y = linear2(dropout(activation(linear1(x)))): shared by FeedForward and
// TransformerEncoderLayer, which holds linear1 and linear2 itself to keep PyTorch's state_dict
// names. hidden_dropout is nn.TransformerEncoderLayer's `dropout` and timm's Mlp.drop1 (off by
// default: inference). The products run on `parallel`'s threads.
template <class T>
void feed_forward(const Linear<T>& linear1, Activation activation, const Linear<T>& linear2,
                  ConstMatrixRef<T> x, MatrixRef<T> y, FeedForwardCache<T>* cache = nullptr,
                  const ParallelOptions& parallel = {}, const Dropout& hidden_dropout = {}) {
  Matrix<T> hidden = linear1.forward(x, parallel);
  if (cache) cache->pre_activation = hidden;
  apply_activation<T>(activation, hidden);
  hidden_dropout.apply<T>(hidden);
  linear2.forward(hidden, y, parallel);
  if (cache) {
    cache->hidden = std::move(hidden);
    cache->hidden_dropout = hidden_dropout;
  }
}

// The backward pass of feed_forward(linear1, activation, linear2, x, y, &cache) given
// dy = dL/dy: returns dx and accumulates the parameter gradients of linear1 and linear2 into
// grad1 and grad2 (Linear::backward through each layer, the forward's dropout and
// activation_backward between them).
template <class T>
Matrix<T> feed_forward_backward(const Linear<T>& linear1, Activation activation,
                                const Linear<T>& linear2, ConstMatrixRef<T> x,
                                const FeedForwardCache<T>& cache, ConstMatrixRef<T> dy,
                                Linear<T>& grad1, Linear<T>& grad2,
                                const ParallelOptions& parallel = {}) {
  const Index n = x.rows(), hidden = linear1.out_features();
  detail::require_matrix(x, n, linear1.in_features(), "feed_forward_backward x");
  detail::require_matrix(cache.pre_activation, n, hidden,
                         "feed_forward_backward cache.pre_activation");
  detail::require_matrix(cache.hidden, n, hidden, "feed_forward_backward cache.hidden");
  detail::require_matrix(dy, n, linear2.out_features(), "feed_forward_backward dy");
  Matrix<T> dhidden = linear2.backward(cache.hidden, dy, grad2, parallel);
  cache.hidden_dropout.template apply<T>(dhidden);
  activation_backward<T>(activation, cache.pre_activation, dhidden);
  return linear1.backward(x, dhidden, grad1, parallel);
}

template <class T>
class FeedForward {
 public:
  FeedForward() = default;

  // Zero parameters of the right shapes: load them or call reset_parameters().
  explicit FeedForward(const FeedForwardOptions& options)
      : linear1(checked(options, {options.d_model, options.dim_feedforward, options.bias})),
        linear2(LinearOptions{options.dim_feedforward, options.d_model, options.bias}),
        activation(options.activation) {}

  FeedForward(const FeedForwardOptions& options, Rng& rng) : FeedForward(options) {
    reset_parameters(rng);
  }

  // nn.Linear's default initialisation for both layers.
  void reset_parameters(Rng& rng) {
    linear1.reset_parameters(rng);
    linear2.reset_parameters(rng);
  }

  Index d_model() const { return linear1.in_features(); }
  Index dim_feedforward() const { return linear1.out_features(); }

  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, FeedForwardCache<T>* cache = nullptr) const {
    feed_forward<T>(linear1, activation, linear2, x, y, cache);
  }

  Matrix<T> forward(ConstMatrixRef<T> x, FeedForwardCache<T>* cache = nullptr) const {
    Matrix<T> y(x.rows(), d_model());
    forward(x, y, cache);
    return y;
  }

  // The backward pass of forward(x, &cache): returns dx, accumulates into gradient.linear1 and
  // gradient.linear2.
  Matrix<T> backward(ConstMatrixRef<T> x, const FeedForwardCache<T>& cache, ConstMatrixRef<T> dy,
                     FeedForward<T>& gradient) const {
    return feed_forward_backward<T>(linear1, activation, linear2, x, cache, dy, gradient.linear1,
                                    gradient.linear2);
  }

  Linear<T> linear1;
  Linear<T> linear2;
  Activation activation = Activation::relu;

 private:
  // Options are checked here so the message names FeedForwardOptions, not LinearOptions.
  static LinearOptions checked(const FeedForwardOptions& o, const LinearOptions& first) {
    detail::require_argument(o.d_model > 0, "FeedForwardOptions::d_model", "> 0", o.d_model);
    detail::require_argument(o.dim_feedforward > 0, "FeedForwardOptions::dim_feedforward", "> 0",
                             o.dim_feedforward);
    return first;
  }
};

template <class T, class F>
void for_each_parameter(FeedForward<T>& ff, const std::string& prefix, F&& f) {
  for_each_parameter(ff.linear1, prefix + "linear1.", f);
  for_each_parameter(ff.linear2, prefix + "linear2.", f);
}

}  // namespace attnlens
