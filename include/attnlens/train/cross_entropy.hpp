// Softmax cross-entropy with mean reduction, PyTorch's F.cross_entropy(logits, labels): the loss
// and its gradient (softmax(logits) - onehot(labels)) / N in one pass (docs/math.md section 6).
#pragma once

#include <cmath>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

template <class T>
struct CrossEntropy {
  double loss = 0;                 // mean over rows of -log softmax(logits)[label], in double
  Matrix<T> grad_logits;           // d loss / d logits = (softmax(logits) - onehot(labels)) / N
  std::vector<Index> predictions;  // each row's argmax (the first of equal maxima)
};

// logits: N x classes, N >= 1; labels: N classes in [0, classes). Each row is reduced in double
// after subtracting its maximum (log-sum-exp), so large logits neither overflow nor cost the
// loss its digits. A NaN or +inf logit makes its row's loss and gradient NaN, as in PyTorch.
template <class T>
CrossEntropy<T> softmax_cross_entropy(ConstMatrixRef<T> logits, const std::vector<Index>& labels) {
  const Index n = logits.rows(), classes = logits.cols();
  detail::require_shape(n > 0 && classes > 0, "logits", "N x classes with N, classes >= 1",
                        detail::concat(n, " x ", classes));
  detail::require_shape(static_cast<Index>(labels.size()) == n, "labels",
                        detail::concat(n, " entries, one per row of logits"),
                        detail::concat(labels.size(), " entries"));
  for (Index i = 0; i < n; ++i) {
    const Index label = labels[static_cast<std::size_t>(i)];
    detail::require_argument(label >= 0 && label < classes, detail::concat("labels[", i, "]"),
                             detail::concat("a class in [0, ", classes, ")"), label);
  }
  CrossEntropy<T> result;
  result.grad_logits.resize(n, classes);
  result.predictions.resize(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const Index label = labels[static_cast<std::size_t>(i)];
    const Eigen::ArrayXd row = logits.row(i).transpose().template cast<double>().array();
    Index argmax = 0;
    const double max = row.maxCoeff(&argmax);
    const Eigen::ArrayXd exp_shifted = (row - max).exp();
    const double sum = exp_shifted.sum();
    result.loss += std::log(sum) - (row[label] - max);  // log-sum-exp - logit of the label
    Eigen::ArrayXd grad = exp_shifted / sum;
    grad[label] -= 1;
    result.grad_logits.row(i) =
        (grad / static_cast<double>(n)).template cast<T>().matrix().transpose();
    result.predictions[static_cast<std::size_t>(i)] = argmax;
  }
  result.loss /= static_cast<double>(n);
  return result;
}

}  // namespace attnlens
