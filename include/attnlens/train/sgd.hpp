// Stochastic gradient descent as torch.optim.SGD (PyTorch 1.13, its single-tensor path) defines
// it, step by step in the parameters' own precision (docs/training.md, "Optimizers"):
//   d = g + weight_decay p                       (parameters whose group decays)
//   b = d on the first step, else momentum b + (1 - dampening) d
//   d = nesterov ? d + momentum b : b            (with momentum)
//   p = p - lr d
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/train/optimizer_state.hpp"
#include "attnlens/train/parameter_groups.hpp"

namespace attnlens {

struct SgdOptions {
  // torch.optim.SGD has no default learning rate; NaN makes a forgotten one an error.
  double lr = std::numeric_limits<double>::quiet_NaN();
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;  // L2 added to the gradient (coupled), unlike AdamW's
  bool nesterov = false;
  // The parameters weight_decay leaves alone (parameter_groups.hpp); {} decays every one, as
  // torch.optim.SGD(module.parameters(), ...) does.
  std::vector<std::string> no_weight_decay = default_no_weight_decay();
};

// torch.optim.SGD's checks, plus finite values and dampening in [0, 1] (a dampening above 1
// would turn the gradient's share of the momentum negative).
inline void check_sgd_options(const SgdOptions& o) {
  const auto finite_non_negative = [](double v) { return std::isfinite(v) && v >= 0; };
  detail::require_argument(finite_non_negative(o.lr), "SgdOptions::lr",
                           "a finite value >= 0 (SGD has no default)", o.lr);
  detail::require_argument(finite_non_negative(o.momentum), "SgdOptions::momentum",
                           "a finite value >= 0", o.momentum);
  detail::require_argument(std::isfinite(o.dampening) && o.dampening >= 0 && o.dampening <= 1,
                           "SgdOptions::dampening", "a value in [0, 1]", o.dampening);
  detail::require_argument(finite_non_negative(o.weight_decay), "SgdOptions::weight_decay",
                           "a finite value >= 0", o.weight_decay);
  detail::require_argument(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
                           "SgdOptions::nesterov", "momentum > 0 and dampening 0 with nesterov",
                           detail::concat("momentum ", o.momentum, ", dampening ", o.dampening));
  detail::check_parameter_patterns(o.no_weight_decay, "SgdOptions::no_weight_decay");
}

// Steps a module from its gradient module (zeros_like(module), filled by backward), or two
// parameter lists side by side. The first step (or load_state) binds the optimizer to the
// parameters' names and sizes; a later step with other parameters is a ShapeError.
template <class T>
class Sgd : public detail::OptimizerBase<Sgd<T>, T, SgdOptions> {
  using Base = detail::OptimizerBase<Sgd<T>, T, SgdOptions>;
  using Base::bound_;
  using Base::options_;
  using Base::steps_;

 public:
  using Base::load_state;
  using Base::step;

  explicit Sgd(const SgdOptions& options) : Base(options) { check_sgd_options(options_); }

  // New options from the next step on (a schedule's lr, one-cycle's momentum); the momentum
  // buffers stay, as in a torch.optim param_group edited between steps.
  void set_options(const SgdOptions& options) {
    check_sgd_options(options);
    options_ = options;
    detail::set_decay(bound_, options_.no_weight_decay);
  }

  void step(const std::vector<NamedParameter<T>>& parameters,
            const std::vector<NamedParameter<T>>& gradients) {
    const std::string who = "Sgd::step";
    detail::check_gradients(parameters, gradients, who);
    this->bind_or_check(parameters, who);
    const bool momentum = options_.momentum != 0;
    // torch.optim.SGD creates the buffer as a copy of d on the first step with momentum.
    const bool first = momentum && momentum_buffer_.empty();
    if (first) {
      momentum_buffer_.resize(bound_.size());
      for (std::size_t n = 0; n < bound_.size(); ++n) momentum_buffer_[n].resize(bound_[n].size);
    }
    // PyTorch turns each scalar into the tensor's type before the element loop; so do we.
    const T weight_decay = T(options_.weight_decay), mu = T(options_.momentum),
            keep = T(1 - options_.dampening), minus_lr = T(-options_.lr);
    for (std::size_t n = 0; n < bound_.size(); ++n) {
      T* p = parameters[n].data;
      const T* g = gradients[n].data;
      T* buffer = momentum ? momentum_buffer_[n].data() : nullptr;
      const bool decay = options_.weight_decay != 0 && bound_[n].decay;
      for (Index e = 0; e < bound_[n].size; ++e) {
        T d = g[e];
        if (decay) d = d + weight_decay * p[e];
        if (momentum) {
          buffer[e] = first ? d : buffer[e] * mu + keep * d;
          d = options_.nesterov ? d + mu * buffer[e] : buffer[e];
        }
        p[e] = p[e] + minus_lr * d;
      }
    }
    ++steps_;
  }

  // The step count and, once a step with momentum was taken, every momentum_buffer.
  OptimizerState<T> state() const {
    return detail::export_state<T>("sgd", steps_, bound_, {{"momentum_buffer", &momentum_buffer_}});
  }

  // Binds the optimizer to `parameters` and restores a state saved by state(): the step count
  // and momentum buffers for every parameter or for none (none: the next step with momentum
  // starts them, as torch.optim.SGD does), each of its parameter's shape. ArgumentError for
  // another optimizer's state or a missing or unknown tensor, ShapeError for a wrong shape.
  void load_state(const OptimizerState<T>& state,
                  const std::vector<NamedParameter<T>>& parameters) {
    std::vector<detail::BoundParameter> bound =
        detail::bind_parameters(parameters, options_.no_weight_decay);
    std::vector<Vector<T>> buffers;
    detail::import_state<T>(state, "sgd", bound, kinds(buffers), "Sgd::load_state");
    this->bind(std::move(bound), state.step);
    momentum_buffer_ = std::move(buffers);
  }

 private:
  static std::vector<detail::BufferKind<T>> kinds(std::vector<Vector<T>>& momentum_buffer) {
    return {{"momentum_buffer", &momentum_buffer, false, true, false}};
  }

  std::vector<Vector<T>> momentum_buffer_;  // empty until the first step with momentum
};

}  // namespace attnlens
