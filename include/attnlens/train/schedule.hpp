// Learning-rate schedules as functions of the step (docs/training.md, "Schedules"): the value
// for optimizer step `step` (0 for the first), so a resumed run recomputes it from the saved
// step count. Linear warm-up + cosine decay, and one-cycle as torch.optim.lr_scheduler.OneCycleLR.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// Linear warm-up from 0 to base_lr over warmup_steps steps, then a half cosine from base_lr to
// min_lr at total_steps, min_lr after it. With W = warmup_steps, T = total_steps:
//   step < W:       base_lr * step / W
//   W <= step < T:  min_lr + (base_lr - min_lr) (1 + cos(pi (step - W) / (T - W))) / 2
//   step >= T:      min_lr
// It is torch.optim.lr_scheduler.LambdaLR(optimizer, f) with the optimizer's lr = base_lr and
// f(step) the line above divided by base_lr (the fixture writes it so; tests/reference/
// oracles/optim.py), and for min_lr = 0 the schedule of transformers'
// get_cosine_schedule_with_warmup. The first warm-up step has lr 0: it still moves AdamW's
// moments, as in those schedules.
struct WarmupCosineOptions {
  double base_lr = 1e-3;
  double min_lr = 0;
  Index warmup_steps = 0;
  Index total_steps = 0;  // > 0, >= warmup_steps
};

inline void check_warmup_cosine_options(const WarmupCosineOptions& o) {
  detail::require_argument(std::isfinite(o.base_lr) && o.base_lr >= 0,
                           "WarmupCosineOptions::base_lr", "a finite value >= 0", o.base_lr);
  detail::require_argument(std::isfinite(o.min_lr) && o.min_lr >= 0 && o.min_lr <= o.base_lr,
                           "WarmupCosineOptions::min_lr",
                           detail::concat("a value in [0, base_lr = ", o.base_lr, "]"), o.min_lr);
  detail::require_argument(o.total_steps > 0, "WarmupCosineOptions::total_steps", "> 0",
                           o.total_steps);
  detail::require_argument(
      o.warmup_steps >= 0 && o.warmup_steps <= o.total_steps, "WarmupCosineOptions::warmup_steps",
      detail::concat("a count in [0, total_steps = ", o.total_steps, "]"), o.warmup_steps);
}

inline double warmup_cosine_lr(Index step, const WarmupCosineOptions& o) {
  check_warmup_cosine_options(o);
  detail::require_argument(step >= 0, "warmup_cosine_lr: step", ">= 0", step);
  if (step < o.warmup_steps)
    return o.base_lr * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
  if (step >= o.total_steps) return o.min_lr;
  const double progress = static_cast<double>(step - o.warmup_steps) /
                          static_cast<double>(o.total_steps - o.warmup_steps);
  const double pi = 3.14159265358979323846;
  return o.min_lr + (o.base_lr - o.min_lr) * (1 + std::cos(pi * progress)) / 2;
}

enum class OneCycleAnneal { cos, linear };  // OneCycleLR's anneal_strategy

// torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps, pct_start,
// anneal_strategy, cycle_momentum, base_momentum, max_momentum, div_factor,
// final_div_factor, three_phase) of PyTorch 1.13, one parameter group: one_cycle_lr(step) is
// the lr it sets for optimizer step `step` (get_last_lr() after `step` calls of
// scheduler.step()), one_cycle_momentum(step) the momentum (SGD) or beta1 (AdamW) it sets with
// cycle_momentum=True. Phases (end steps as PyTorch computes them, in double):
//   two-phase:   initial -> max_lr until pct_start T - 1, max_lr -> min until T - 1
//   three-phase: initial -> max_lr until pct_start T - 1, max_lr -> initial until
//                2 pct_start T - 2, initial -> min until T - 1
// with initial = max_lr / div_factor, min = initial / final_div_factor, each phase annealed by
// cos (end + (start - end) (1 + cos(pi pct)) / 2) or linearly in pct = (step - phase start) /
// (phase end - phase start). Momentum goes max -> base -> max (three-phase: then stays at max).
struct OneCycleOptions {
  double max_lr = 1e-3;
  Index total_steps = 0;  // > 0; PyTorch's epochs * steps_per_epoch
  double pct_start = 0.3;
  OneCycleAnneal anneal = OneCycleAnneal::cos;
  double div_factor = 25;
  double final_div_factor = 1e4;
  bool three_phase = false;
  double base_momentum = 0.85;
  double max_momentum = 0.95;
};

inline void check_one_cycle_options(const OneCycleOptions& o) {
  const auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  detail::require_argument(std::isfinite(o.max_lr) && o.max_lr >= 0, "OneCycleOptions::max_lr",
                           "a finite value >= 0", o.max_lr);
  detail::require_argument(o.total_steps > 0, "OneCycleOptions::total_steps", "> 0", o.total_steps);
  detail::require_argument(o.pct_start >= 0 && o.pct_start <= 1, "OneCycleOptions::pct_start",
                           "a value in [0, 1]", o.pct_start);
  detail::require_argument(positive(o.div_factor), "OneCycleOptions::div_factor",
                           "a finite value > 0", o.div_factor);
  detail::require_argument(positive(o.final_div_factor), "OneCycleOptions::final_div_factor",
                           "a finite value > 0", o.final_div_factor);
  detail::require_argument(std::isfinite(o.base_momentum), "OneCycleOptions::base_momentum",
                           "a finite value", o.base_momentum);
  detail::require_argument(std::isfinite(o.max_momentum), "OneCycleOptions::max_momentum",
                           "a finite value", o.max_momentum);
}

namespace detail {

// The anneal of the phase holding `step`, between the values each phase gives: OneCycleLR's
// get_lr loop. `values[i]` is {start, end} of phase i.
inline double one_cycle_value(Index step, const OneCycleOptions& o, const double (*values)[2],
                              const char* what) {
  check_one_cycle_options(o);
  // Step total_steps is past the cycle, but PyTorch computes it (the scheduler.step() after
  // the last optimizer step), so it is accepted; OneCycleLR raises beyond it.
  require_argument(step >= 0 && step <= o.total_steps, what,
                   concat("a step in [0, total_steps = ", o.total_steps, "]"), step);
  const double total = static_cast<double>(o.total_steps);
  const double two[] = {o.pct_start * total - 1, total - 1};
  const double three[] = {o.pct_start * total - 1, 2 * o.pct_start * total - 2, total - 1};
  const double* ends = o.three_phase ? three : two;
  const std::size_t phases = o.three_phase ? 3 : 2;
  const double s = static_cast<double>(step);
  double start = 0;
  for (std::size_t i = 0; i < phases; ++i) {
    if (s <= ends[i] || i + 1 == phases) {
      // PyTorch divides by zero here (a first phase that ends at step 0: pct_start T = 1).
      require_argument(
          ends[i] != start, "OneCycleOptions::pct_start",
          concat("a phase longer than 0 steps at step ", step, " (pct_start * total_steps != 1)"),
          o.pct_start);
      const double pct = (s - start) / (ends[i] - start);
      const double from = values[i][0], to = values[i][1];
      if (o.anneal == OneCycleAnneal::linear) return (to - from) * pct + from;
      const double pi = 3.14159265358979323846;
      return to + (from - to) / 2.0 * (std::cos(pi * pct) + 1);
    }
    start = ends[i];
  }
  return 0;  // not reached: the last phase takes every remaining step
}

}  // namespace detail

inline double one_cycle_lr(Index step, const OneCycleOptions& o) {
  const double initial = o.max_lr / o.div_factor;
  const double min = initial / o.final_div_factor;
  const double two[][2] = {{initial, o.max_lr}, {o.max_lr, min}};
  const double three[][2] = {{initial, o.max_lr}, {o.max_lr, initial}, {initial, min}};
  return detail::one_cycle_value(step, o, o.three_phase ? three : two, "one_cycle_lr: step");
}

inline double one_cycle_momentum(Index step, const OneCycleOptions& o) {
  const double two[][2] = {{o.max_momentum, o.base_momentum}, {o.base_momentum, o.max_momentum}};
  const double three[][2] = {{o.max_momentum, o.base_momentum},
                             {o.base_momentum, o.max_momentum},
                             {o.max_momentum, o.max_momentum}};
  return detail::one_cycle_value(step, o, o.three_phase ? three : two, "one_cycle_momentum: step");
}

}  // namespace attnlens
