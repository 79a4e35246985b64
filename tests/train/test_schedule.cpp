// The schedules against torch.optim.lr_scheduler on optim_schedules (LambdaLR with the warm-up +
// cosine formula, OneCycleLR's lr and momentum in its two- and three-phase, cos and linear
// forms), their end points, and bad options.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "attnlens/train/schedule.hpp"
#include "support/blocks.hpp"
#include "support/expect_error.hpp"
#include "support/fixtures.hpp"
#include "support/optim_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

OneCycleOptions one_cycle_case(const nlohmann::json& c) {
  OneCycleOptions o;
  o.max_lr = c["max_lr"];
  o.total_steps = c["total_steps"];
  o.pct_start = c["pct_start"];
  o.anneal = c["anneal_strategy"] == "cos" ? OneCycleAnneal::cos : OneCycleAnneal::linear;
  o.div_factor = c["div_factor"];
  o.final_div_factor = c["final_div_factor"];
  o.three_phase = c["three_phase"];
  o.base_momentum = c["base_momentum"];
  o.max_momentum = c["max_momentum"];
  return o;
}

TEST(Schedule, MatchesTorchSchedulers) {
  const io::SafeTensors file = testing::load_fixture("optim_schedules.safetensors");
  double lr_error = 0, momentum_error = 0;
  int cases = 0;
  for (const nlohmann::json& c : testing::fixture_cases(file)) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ++cases;
    const Tensor<double> lr = file.get<double>(name + ".lr");
    if (c["kind"] == "warmup_cosine") {
      WarmupCosineOptions o;
      o.base_lr = c["base_lr"];
      o.min_lr = c["min_lr"];
      o.warmup_steps = c["warmup_steps"];
      o.total_steps = c["total_steps"];
      for (Index step = 0; step < lr.size(); ++step) {
        const double error = std::fabs(warmup_cosine_lr(step, o) - lr.data()[step]) / o.base_lr;
        EXPECT_LE(error, 1e-15) << "step " << step;
        lr_error = std::max(lr_error, error);
      }
      continue;
    }
    const OneCycleOptions o = one_cycle_case(c);
    const Tensor<double> momentum = file.get<double>(name + ".momentum");
    ASSERT_EQ(lr.size(), o.total_steps + 1);
    for (Index step = 0; step <= o.total_steps; ++step) {
      const double error = std::fabs(one_cycle_lr(step, o) - lr.data()[step]) / o.max_lr;
      const double m_error = std::fabs(one_cycle_momentum(step, o) - momentum.data()[step]);
      EXPECT_LE(error, 1e-15) << "step " << step;
      EXPECT_LE(m_error, 1e-15) << "step " << step;
      lr_error = std::max(lr_error, error);
      momentum_error = std::max(momentum_error, m_error);
    }
  }
  EXPECT_EQ(cases, 9);
  testing::report_error("schedules lr (relative to the peak)", lr_error);
  testing::report_error("schedules momentum", momentum_error);
}

TEST(Schedule, WarmupCosineEndPoints) {
  WarmupCosineOptions o;
  o.base_lr = 0.5;
  o.min_lr = 0.1;
  o.warmup_steps = 4;
  o.total_steps = 12;
  EXPECT_EQ(warmup_cosine_lr(0, o), 0.0);
  EXPECT_EQ(warmup_cosine_lr(2, o), 0.25);
  EXPECT_EQ(warmup_cosine_lr(4, o), 0.5);         // the peak, the decay's start
  EXPECT_DOUBLE_EQ(warmup_cosine_lr(8, o), 0.3);  // half way: the middle
  EXPECT_EQ(warmup_cosine_lr(12, o), 0.1);        // the end and after it
  EXPECT_EQ(warmup_cosine_lr(1000, o), 0.1);
  o.warmup_steps = 0;
  EXPECT_EQ(warmup_cosine_lr(0, o), 0.5);
}

TEST(Schedule, OneCycleEndPoints) {
  OneCycleOptions o;
  o.max_lr = 1.0;
  o.total_steps = 101;  // pct_start T - 1 = 29.3: the peak falls between steps
  o.pct_start = 0.3;
  EXPECT_NEAR(one_cycle_lr(0, o), 1.0 / 25, 1e-15);          // initial = max / div_factor
  EXPECT_NEAR(one_cycle_lr(100, o), 1.0 / 25 / 1e4, 1e-15);  // min at total_steps - 1
  EXPECT_NEAR(one_cycle_momentum(0, o), 0.95, 1e-15);
  EXPECT_NEAR(one_cycle_momentum(100, o), 0.95, 1e-15);
  o.total_steps = 100;  // peak exactly at step 29
  EXPECT_NEAR(one_cycle_lr(29, o), 1.0, 1e-15);
  EXPECT_NEAR(one_cycle_momentum(29, o), 0.85, 1e-15);
}

TEST(Schedule, RejectsBadOptionsAndSteps) {
  WarmupCosineOptions w;
  w.total_steps = 10;
  expect_error_naming<ArgumentError>([&] { warmup_cosine_lr(-1, w); }, "step");
  w.warmup_steps = 11;
  expect_error_naming<ArgumentError>([&] { warmup_cosine_lr(0, w); },
                                     "WarmupCosineOptions::warmup_steps");
  w.warmup_steps = 0;
  w.min_lr = 1.0;  // above base_lr
  expect_error_naming<ArgumentError>([&] { warmup_cosine_lr(0, w); },
                                     "WarmupCosineOptions::min_lr");
  w.min_lr = 0;
  w.base_lr = -1;
  expect_error_naming<ArgumentError>([&] { warmup_cosine_lr(0, w); },
                                     "WarmupCosineOptions::base_lr");
  w.base_lr = 1;
  w.total_steps = 0;
  expect_error_naming<ArgumentError>([&] { warmup_cosine_lr(0, w); },
                                     "WarmupCosineOptions::total_steps");

  OneCycleOptions o;
  o.total_steps = 10;
  expect_error_naming<ArgumentError>([&] { one_cycle_lr(11, o); }, "one_cycle_lr: step");
  expect_error_naming<ArgumentError>([&] { one_cycle_momentum(-1, o); },
                                     "one_cycle_momentum: step");
  o.pct_start = 0.1;  // the first phase ends at step 0: PyTorch divides by zero there
  expect_error_naming<ArgumentError>([&] { one_cycle_lr(0, o); }, "OneCycleOptions::pct_start");
  EXPECT_GT(one_cycle_lr(1, o), 0);  // the later steps are defined
  o.pct_start = 1.5;
  expect_error_naming<ArgumentError>([&] { one_cycle_lr(1, o); }, "OneCycleOptions::pct_start");
  o.pct_start = 0.3;
  o.div_factor = 0;
  expect_error_naming<ArgumentError>([&] { one_cycle_lr(1, o); }, "OneCycleOptions::div_factor");
  o.div_factor = 25;
  o.total_steps = 0;
  expect_error_naming<ArgumentError>([&] { one_cycle_lr(0, o); }, "OneCycleOptions::total_steps");
}

}  // namespace
}  // namespace attnlens
