// Gradient clipping by the global L2 norm, torch.nn.utils.clip_grad_norm_(parameters, max_norm)
// (norm_type 2): every gradient scaled by clip_coef = max_norm / (total_norm + 1e-6) when that
// is below 1; returns total_norm, the norm before clipping (docs/training.md, "Clipping").
#pragma once

#include <cmath>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/train/parameter_groups.hpp"  // detail::if_module

namespace attnlens {

// The norm is accumulated in double (core/parameters.hpp's parameter_norm), PyTorch's in the
// gradients' type: in float the two differ by rounding (about 1e-7 relative). A non-finite
// norm makes clip_coef NaN or 0 and, as PyTorch's default error_if_nonfinite=False, the
// gradients are scaled by it: check the returned norm before stepping.
template <class T>
double clip_gradient_norm(const std::vector<NamedParameter<T>>& gradients, double max_norm) {
  detail::require_argument(max_norm >= 0, "clip_gradient_norm: max_norm", "a value >= 0", max_norm);
  double sum = 0;
  for (const NamedParameter<T>& g : gradients)
    for (Index e = 0; e < g.size; ++e)
      sum += static_cast<double>(g.data[e]) * static_cast<double>(g.data[e]);
  const double total_norm = std::sqrt(sum);
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (!(clip_coef >= 1)) {  // NaN scales too, as clamp(NaN, max=1) does in PyTorch
    const T scale = T(clip_coef);
    for (const NamedParameter<T>& g : gradients)
      for (Index e = 0; e < g.size; ++e) g.data[e] *= scale;
  }
  return total_norm;
}

// The gradient module's parameters (zeros_like(module), after backward) clipped in place.
template <template <class> class Module, class T, detail::if_module<Module, T> = 0>
double clip_gradient_norm(Module<T>& gradient, double max_norm) {
  return clip_gradient_norm(named_parameters(gradient), max_norm);
}

}  // namespace attnlens
