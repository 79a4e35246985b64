// Test helpers for the optimizer fixtures (tests/reference/oracles/optim.py): a case's
// parameters and gradients as attnlens parameter lists, torch.optim's trajectory step by step
// against an attnlens optimizer, and the relative error measure the optimizer tests report.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/core/parameters.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/parameter_groups.hpp"
#include "attnlens/train/schedule.hpp"
#include "attnlens/train/sgd.hpp"
#include "support/fixtures.hpp"

namespace attnlens::testing {

// The fixtures' bound: float 1e-6, double 1e-12, relative (relative_error).
template <class T>
constexpr double optimizer_tolerance() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-12;
}

// max |a - e| / max |e|: relative to the tensor's scale. Entry by entry it would not do: a
// parameter that crosses 0 (p - lr d with p close to lr d) or a moment whose gradients changed
// sign keeps the absolute rounding error of its terms, a ulp of the tensor's scale, and PyTorch's
// kernels round differently from a plain loop (fused multiply-adds in the vectorized add_).
template <class T>
double relative_error(const Tensor<T>& actual, const Tensor<T>& expected) {
  EXPECT_EQ(actual.shape(), expected.shape());
  if (actual.shape() != expected.shape()) return INFINITY;
  double scale = 0, worst = 0;
  for (Index e = 0; e < expected.size(); ++e) {
    const double a = actual.data()[e], x = expected.data()[e];
    if (std::isnan(a) || std::isnan(x)) return INFINITY;
    scale = std::max(scale, std::fabs(x));
    worst = std::max(worst, std::fabs(a - x));
  }
  return worst == 0 ? 0 : worst / scale;
}

// ATTNLENS_OPTIM_REPORT=1 prints the largest error of each check.
inline void report_error(const std::string& what, double error) {
  if (std::getenv("ATTNLENS_OPTIM_REPORT")) std::printf("%-48s %.3g\n", what.c_str(), error);
}

// A case's tensors by parameter name, and parameter lists viewing them.
template <class T>
struct ParameterSet {
  std::vector<std::string> names;
  std::map<std::string, Tensor<T>> tensors;

  std::vector<NamedParameter<T>> list() {
    std::vector<NamedParameter<T>> out;
    for (const std::string& name : names) {
      Tensor<T>& t = tensors.at(name);
      out.push_back({name, t.data(), t.size(), t.shape()});
    }
    return out;
  }
};

template <class T>
ParameterSet<T> read_parameter_set(const io::SafeTensors& file, const std::string& prefix,
                                   const std::vector<std::string>& names) {
  ParameterSet<T> set;
  set.names = names;
  for (const std::string& name : names) set.tensors.emplace(name, file.get<T>(prefix + name));
  return set;
}

inline std::vector<std::string> fixture_no_weight_decay(const nlohmann::json& c) {
  return c["groups"] == "default" ? default_no_weight_decay() : std::vector<std::string>{};
}

inline SgdOptions fixture_sgd_options(const nlohmann::json& c) {
  SgdOptions o;
  o.lr = c["lr"];
  o.momentum = c["momentum"];
  o.dampening = c["dampening"];
  o.weight_decay = c["weight_decay"];
  o.nesterov = c["nesterov"];
  o.no_weight_decay = fixture_no_weight_decay(c);
  return o;
}

inline AdamWOptions fixture_adamw_options(const nlohmann::json& c) {
  AdamWOptions o;
  o.lr = c["lr"];
  o.beta1 = c["beta1"];
  o.beta2 = c["beta2"];
  o.eps = c["eps"];
  o.weight_decay = c["weight_decay"];
  o.amsgrad = c["amsgrad"];
  o.no_weight_decay = fixture_no_weight_decay(c);
  return o;
}

// The case's lr and momentum (SGD) or beta1 (AdamW) of step k from attnlens's schedules, held
// against what torch.optim.lr_scheduler set (stored by the fixture); the options updated.
template <class Options>
void apply_fixture_schedule(const nlohmann::json& c, const io::SafeTensors& file, Index k,
                            Options& options, double& momentum) {
  const std::string name = c["name"];
  const double stored_lr = file.get<double>(name + ".lr").data()[k];
  const double stored_momentum = file.get<double>(name + ".momentum").data()[k];
  const Index steps = c["steps"];
  if (c["schedule"] == "one_cycle") {
    OneCycleOptions cycle;
    cycle.max_lr = c["max_lr"];
    cycle.total_steps = steps;
    options.lr = one_cycle_lr(k, cycle);
    momentum = one_cycle_momentum(k, cycle);
  } else if (c["schedule"] == "warmup_cosine") {
    WarmupCosineOptions schedule;
    schedule.base_lr = c["lr"];
    schedule.min_lr = c["min_lr"];
    schedule.warmup_steps = c["warmup_steps"];
    schedule.total_steps = steps;
    options.lr = warmup_cosine_lr(k, schedule);
  }
  EXPECT_NEAR(options.lr, stored_lr, 1e-15 * std::max(1.0, stored_lr)) << "step " << k;
  EXPECT_NEAR(momentum, stored_momentum, 1e-15) << "step " << k;
}

// Runs every case of `optimizer` ("sgd" / "adamw") of optim_{f32,f64}: the weight-decay groups
// of the default rule, each step's lr, the parameters after every step (the first one alone is
// a single step against torch.optim's, from the initial parameters) and the final state.
// Returns the number of cases and sets the largest parameter errors (over every step, and of
// the first step) and state errors.
template <class T, class Optimizer, class MakeOptions>
int check_optimizer_fixture(const std::string& optimizer, MakeOptions make_options,
                            double& parameter_error, double& state_error,
                            double& first_step_error) {
  const io::SafeTensors file = load_fixture(
      std::string("optim_") + (std::is_same_v<T, float> ? "f32" : "f64") + ".safetensors");
  parameter_error = state_error = first_step_error = 0;
  int cases = 0;
  for (const nlohmann::json& c : fixture_cases(file)) {
    if (c["optimizer"] != optimizer) continue;
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ++cases;
    const std::vector<std::string> names = c["parameters"];
    ParameterSet<T> params = read_parameter_set<T>(file, name + ".", names);
    auto options = make_options(c);
    const WeightDecayGroups groups = weight_decay_groups(params.list(), options.no_weight_decay);
    EXPECT_EQ(groups.not_decayed, c["not_decayed"].get<std::vector<std::string>>());

    Optimizer opt(options);
    const Index steps = c["steps"];
    for (Index k = 0; k < steps; ++k) {
      double momentum = 0;
      if constexpr (std::is_same_v<Optimizer, Sgd<T>>) {
        momentum = options.momentum;
        apply_fixture_schedule(c, file, k, options, momentum);
        options.momentum = momentum;
      } else {
        momentum = options.beta1;
        apply_fixture_schedule(c, file, k, options, momentum);
        options.beta1 = momentum;
      }
      opt.set_options(options);
      ParameterSet<T> grads =
          read_parameter_set<T>(file, name + ".grad." + std::to_string(k) + ".", names);
      opt.step(params.list(), grads.list());
      for (const std::string& p : names) {
        const double error = relative_error(
            params.tensors.at(p), file.get<T>(name + ".param." + std::to_string(k) + "." + p));
        EXPECT_LE(error, optimizer_tolerance<T>()) << "step " << k << " " << p;
        parameter_error = std::max(parameter_error, error);
        if (k == 0) first_step_error = std::max(first_step_error, error);
      }
    }
    EXPECT_EQ(opt.steps(), steps);

    // The state under torch.optim's names: the fixture's <case>.state.<parameter>.<buffer>.
    const OptimizerState<T> state = opt.state();
    std::vector<std::string> expected_names, actual_names;
    for (const std::string& n : file.names())
      if (n.rfind(name + ".state.", 0) == 0) expected_names.push_back(n.substr(name.size() + 7));
    for (const StateTensor<T>& t : state.tensors) {
      actual_names.push_back(t.name());
      const double error = relative_error(t.value, file.get<T>(name + ".state." + t.name()));
      EXPECT_LE(error, optimizer_tolerance<T>()) << t.name();
      state_error = std::max(state_error, error);
    }
    std::sort(actual_names.begin(), actual_names.end());
    EXPECT_EQ(actual_names, expected_names);
  }
  return cases;
}

}  // namespace attnlens::testing
