// One optimizer step from the gradient a backward pass filled, as every training loop of
// attnlens takes it (docs/training.md): the gradient's global L2 norm, clipped when asked, and
// the step at the schedule's learning rate unless that norm is not finite (an overflow: the
// step is left out, as a gradient scaler would).
#pragma once

#include <cmath>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/train/clip_gradient.hpp"

namespace attnlens {

// Throws ArgumentError naming `what` (the caller's field) unless clip_norm is finite and >= 0;
// a training loop checks it before its first step.
inline void check_clip_norm(double clip_norm, const char* what) {
  detail::require_argument(clip_norm >= 0 && std::isfinite(clip_norm), what, "a finite value >= 0",
                           clip_norm);
}

// clip_norm > 0: clip_gradient_norm(gradient, clip_norm); 0: the norm only. Then, when the norm
// is finite, optimizer.step(model, gradient) at learning_rate(optimizer.steps()), the lr of the
// step about to be taken. Returns the norm before clipping; a non-finite one means no step.
template <template <class> class Module, class T, class Optimizer, class LearningRate>
double clipped_gradient_step(Module<T>& model, Module<T>& gradient, Optimizer& optimizer,
                             double clip_norm, LearningRate&& learning_rate) {
  const double norm =
      clip_norm > 0 ? clip_gradient_norm(gradient, clip_norm) : parameter_norm(gradient);
  if (std::isfinite(norm)) {
    optimizer.set_learning_rate(learning_rate(optimizer.steps()));
    optimizer.step(model, gradient);
  }
  return norm;
}

}  // namespace attnlens
