// AdamW (Loshchilov & Hutter) as torch.optim.AdamW (PyTorch 1.13, its single-tensor path)
// defines it, step by step in the parameters' own precision (docs/training.md, "Optimizers"),
// with t the step count after this step:
//   p = p (1 - lr weight_decay)                  (decoupled; parameters whose group decays)
//   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//   v_max = max(v_max, v)                        (amsgrad; v_max replaces v below)
//   p = p - lr / (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/train/optimizer_state.hpp"
#include "attnlens/train/parameter_groups.hpp"

namespace attnlens {

// torch.optim.AdamW's defaults.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;  // betas[0]; one-cycle schedules cycle it (schedule.hpp)
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  // The parameters weight_decay leaves alone (parameter_groups.hpp); {} decays every one, as
  // torch.optim.AdamW(module.parameters(), ...) does.
  std::vector<std::string> no_weight_decay = default_no_weight_decay();
};

// torch.optim.AdamW's checks, plus finite values.
inline void check_adamw_options(const AdamWOptions& o) {
  const auto finite_non_negative = [](double v) { return std::isfinite(v) && v >= 0; };
  detail::require_argument(finite_non_negative(o.lr), "AdamWOptions::lr", "a finite value >= 0",
                           o.lr);
  detail::require_argument(o.beta1 >= 0 && o.beta1 < 1, "AdamWOptions::beta1", "a value in [0, 1)",
                           o.beta1);
  detail::require_argument(o.beta2 >= 0 && o.beta2 < 1, "AdamWOptions::beta2", "a value in [0, 1)",
                           o.beta2);
  detail::require_argument(finite_non_negative(o.eps), "AdamWOptions::eps", "a finite value >= 0",
                           o.eps);
  detail::require_argument(finite_non_negative(o.weight_decay), "AdamWOptions::weight_decay",
                           "a finite value >= 0", o.weight_decay);
  detail::check_parameter_patterns(o.no_weight_decay, "AdamWOptions::no_weight_decay");
}

// Steps a module from its gradient module (zeros_like(module), filled by backward), or two
// parameter lists side by side. The first step (or load_state) binds the optimizer to the
// parameters' names and sizes; a later step with other parameters is a ShapeError.
template <class T>
class AdamW : public detail::OptimizerBase<AdamW<T>, T, AdamWOptions> {
  using Base = detail::OptimizerBase<AdamW<T>, T, AdamWOptions>;
  using Base::bound_;
  using Base::options_;
  using Base::steps_;

 public:
  using Base::load_state;
  using Base::step;

  explicit AdamW(const AdamWOptions& options = {}) : Base(options) {
    check_adamw_options(options_);
  }

  // New options from the next step on (a schedule's lr, one-cycle's beta1). amsgrad is fixed
  // once the moments exist: torch.optim.AdamW would have no max_exp_avg_sq to continue from.
  void set_options(const AdamWOptions& options) {
    check_adamw_options(options);
    detail::require_argument(
        steps_ == 0 || options.amsgrad == options_.amsgrad, "AdamWOptions::amsgrad",
        detail::concat(options_.amsgrad, " (as in the steps taken)"), options.amsgrad);
    options_ = options;
    detail::set_decay(bound_, options_.no_weight_decay);
  }

  void step(const std::vector<NamedParameter<T>>& parameters,
            const std::vector<NamedParameter<T>>& gradients) {
    const std::string who = "AdamW::step";
    detail::check_gradients(parameters, gradients, who);
    this->bind_or_check(parameters, who);
    if (exp_avg_.empty()) {  // zeros, as torch.optim.AdamW's lazy state
      const auto zeros = [&](std::vector<Vector<T>>& buffers) {
        buffers.resize(bound_.size());
        for (std::size_t n = 0; n < bound_.size(); ++n)
          buffers[n] = Vector<T>::Zero(bound_[n].size);
      };
      zeros(exp_avg_);
      zeros(exp_avg_sq_);
      if (options_.amsgrad) zeros(max_exp_avg_sq_);
    }
    ++steps_;
    // The scalars in double, as PyTorch computes them in Python, then turned into T as its
    // kernels take them.
    const double t = static_cast<double>(steps_);
    const double step_size = options_.lr / (1 - std::pow(options_.beta1, t));
    const T decay = T(1 - options_.lr * options_.weight_decay), beta1 = T(options_.beta1),
            beta2 = T(options_.beta2), one_minus_beta1 = T(1 - options_.beta1),
            one_minus_beta2 = T(1 - options_.beta2),
            correction2_sqrt = T(std::sqrt(1 - std::pow(options_.beta2, t))), eps = T(options_.eps),
            minus_step_size = T(-step_size);
    for (std::size_t n = 0; n < bound_.size(); ++n) {
      T* p = parameters[n].data;
      const T* g = gradients[n].data;
      T* m = exp_avg_[n].data();
      T* v = exp_avg_sq_[n].data();
      T* v_max = options_.amsgrad ? max_exp_avg_sq_[n].data() : nullptr;
      const bool decays = options_.weight_decay != 0 && bound_[n].decay;
      for (Index e = 0; e < bound_[n].size; ++e) {
        if (decays) p[e] = p[e] * decay;
        m[e] = m[e] * beta1 + one_minus_beta1 * g[e];
        v[e] = v[e] * beta2 + one_minus_beta2 * g[e] * g[e];  // addcmul: (value g) g
        T second = v[e];
        if (v_max) {  // torch.maximum: a NaN wins
          if (std::isnan(second) || second > v_max[e]) v_max[e] = second;
          second = v_max[e];
        }
        const T denominator = std::sqrt(second) / correction2_sqrt + eps;
        p[e] = p[e] + minus_step_size * m[e] / denominator;  // addcdiv: (value m) / denom
      }
    }
  }

  // The step count and, after the first step, exp_avg and exp_avg_sq (and max_exp_avg_sq with
  // amsgrad) of every parameter.
  OptimizerState<T> state() const {
    return detail::export_state<T>("adamw", steps_, bound_,
                                   {{"exp_avg", &exp_avg_},
                                    {"exp_avg_sq", &exp_avg_sq_},
                                    {"max_exp_avg_sq", &max_exp_avg_sq_}});
  }

  // Binds the optimizer to `parameters` and restores a state saved by state(): after a step,
  // exp_avg and exp_avg_sq (>= 0) for every parameter, and max_exp_avg_sq (>= 0) exactly when
  // amsgrad is on, each of its parameter's shape; nothing at step 0. ArgumentError for another
  // optimizer's state or a missing or unknown tensor, ShapeError for a wrong shape.
  void load_state(const OptimizerState<T>& state,
                  const std::vector<NamedParameter<T>>& parameters) {
    std::vector<detail::BoundParameter> bound =
        detail::bind_parameters(parameters, options_.no_weight_decay);
    std::vector<Vector<T>> m, v, v_max;
    const bool amsgrad = options_.amsgrad;
    detail::import_state<T>(
        state, "adamw", bound,
        {{"exp_avg", &m, true, false, false},
         {"exp_avg_sq", &v, true, false, true},
         {"max_exp_avg_sq", &v_max, amsgrad, false, true, "AdamWOptions::amsgrad is false"}},
        "AdamW::load_state");
    this->bind(std::move(bound), state.step);
    exp_avg_ = std::move(m);
    exp_avg_sq_ = std::move(v);
    max_exp_avg_sq_ = std::move(v_max);
  }

 private:
  std::vector<Vector<T>> exp_avg_, exp_avg_sq_, max_exp_avg_sq_;  // empty before the first step
};

}  // namespace attnlens
