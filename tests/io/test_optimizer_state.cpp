// The optimizer state file (io/optimizer_state.hpp): its layout, a resume through the file that
// is bit for bit an uninterrupted run, and hostile files (missing or misnamed tensors, another
// dtype, a step that is no scalar, a state that does not fit the module, truncation).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/io/optimizer_state.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/sgd.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

std::string state_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("attnlens_test_optimizer_state_" + name))
      .string();
}

TransformerEncoder<float> state_file_encoder() {
  EncoderOptions o;
  o.layer = {8, 2, 16};
  o.num_layers = 2;
  o.position.type = PositionType::shaw;
  Rng rng(21);
  return TransformerEncoder<float>(o, rng);
}

void state_file_gradient(TransformerEncoder<float>& encoder, TransformerEncoder<float>& gradient,
                         int step) {
  const std::vector<NamedParameter<float>> p = named_parameters(encoder),
                                           g = named_parameters(gradient);
  for (std::size_t n = 0; n < p.size(); ++n)
    for (Index e = 0; e < p[n].size; ++e)
      g[n].data[e] = std::cos(2.0f * p[n].data[e] + 0.1f * static_cast<float>(step + e % 7));
}

bool same_parameters(TransformerEncoder<float>& a, TransformerEncoder<float>& b) {
  const std::vector<NamedParameter<float>> x = named_parameters(a), y = named_parameters(b);
  for (std::size_t n = 0; n < x.size(); ++n)
    if (std::memcmp(x[n].data, y[n].data, sizeof(float) * static_cast<std::size_t>(x[n].size)))
      return false;
  return x.size() == y.size();
}

template <class Optimizer, class Options>
void check_resume_through_file(const Options& options, const std::string& name) {
  constexpr int N = 9, k = 4;
  TransformerEncoder<float> straight = state_file_encoder(), gradient = zeros_like(straight);
  Optimizer uninterrupted(options);
  for (int s = 0; s < N; ++s) {
    state_file_gradient(straight, gradient, s);
    uninterrupted.step(straight, gradient);
  }
  TransformerEncoder<float> resumed = state_file_encoder();
  const std::string path = state_path(name);
  {
    Optimizer first(options);
    for (int s = 0; s < k; ++s) {
      state_file_gradient(resumed, gradient, s);
      first.step(resumed, gradient);
    }
    io::save_optimizer_state(path, first.state());
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  Optimizer second(options);
  io::load_optimizer_state(path, second, resumed);
  for (int s = k; s < N; ++s) {
    state_file_gradient(resumed, gradient, s);
    second.step(resumed, gradient);
  }
  EXPECT_TRUE(same_parameters(straight, resumed));
  std::filesystem::remove(path);
}

TEST(OptimizerStateFile, ResumeIsBitwiseExact) {
  SgdOptions sgd;
  sgd.lr = 0.05;
  sgd.momentum = 0.9;
  sgd.weight_decay = 1e-3;
  check_resume_through_file<Sgd<float>>(sgd, "sgd");
  AdamWOptions adam;
  adam.lr = 3e-3;
  adam.amsgrad = true;
  check_resume_through_file<AdamW<float>>(adam, "adamw");
}

// An AdamW state after two steps of a two-parameter list.
OptimizerState<double> two_step_state() {
  Matrix<double> w = Matrix<double>::Constant(2, 3, 0.5), gw = Matrix<double>::Constant(2, 3, 0.1);
  Vector<double> b = Vector<double>::Ones(2), gb = -b;
  AdamW<double> adam;
  for (int s = 0; s < 2; ++s)
    adam.step({{"fc.weight", w.data(), 6, {2, 3}}, {"fc.bias", b.data(), 2, {2}}},
              {{"fc.weight", gw.data(), 6, {2, 3}}, {"fc.bias", gb.data(), 2, {2}}});
  return adam.state();
}

TEST(OptimizerStateFile, Layout) {
  const OptimizerState<double> state = two_step_state();
  const io::SafeTensors file = io::SafeTensors::parse(io::optimizer_state_bytes(state));
  EXPECT_EQ(file.names(), (std::vector<std::string>{
                              "state.fc.bias.exp_avg", "state.fc.bias.exp_avg_sq",
                              "state.fc.weight.exp_avg", "state.fc.weight.exp_avg_sq", "step"}));
  EXPECT_EQ(file.info("step").dtype, io::DType::I64);
  EXPECT_EQ(file.info("step").shape, Shape{});
  EXPECT_EQ(file.get<std::int64_t>("step").data()[0], 2);
  EXPECT_EQ(file.info("state.fc.weight.exp_avg").dtype, io::DType::F64);
  EXPECT_EQ(file.info("state.fc.weight.exp_avg").shape, (Shape{2, 3}));
  EXPECT_EQ(file.metadata().at("optimizer"), "adamw");
  EXPECT_EQ(file.metadata().at("format"), "attnlens optimizer state");

  const OptimizerState<double> back = io::read_optimizer_state<double>(file);
  EXPECT_EQ(back.optimizer, "adamw");
  EXPECT_EQ(back.step, 2);
  ASSERT_EQ(back.tensors.size(), 4u);
  for (const StateTensor<double>& t : back.tensors) {
    bool found = false;
    for (const StateTensor<double>& u : state.tensors)
      if (u.name() == t.name()) {
        found = true;
        EXPECT_EQ(t.value, u.value) << t.name();  // bit for bit
      }
    EXPECT_TRUE(found) << t.name();
  }
}

// A file like two_step_state's with one change made by `edit` on the writer's inputs.
struct StateFileParts {
  std::map<std::string, Tensor<double>> tensors;
  Tensor<std::int64_t> step = Tensor<std::int64_t>(Shape{}, {2});
  std::map<std::string, std::string> metadata = {{"format", "attnlens optimizer state"},
                                                 {"optimizer", "adamw"}};
  bool with_step = true;
  bool step_as_float = false;

  StateFileParts() {
    for (const StateTensor<double>& t : two_step_state().tensors)
      tensors.emplace("state." + t.name(), t.value);
  }
  std::string bytes() const {
    io::SafeTensorsWriter w;
    for (const auto& [name, t] : tensors) w.add(name, t);
    if (with_step && step_as_float) w.add("step", Tensor<float>(Shape{}, {2.0f}));
    if (with_step && !step_as_float) w.add("step", step);
    for (const auto& [key, value] : metadata) w.set_metadata(key, value);
    return w.bytes();
  }
};

template <class E, class T = double>
void expect_unreadable(const StateFileParts& parts, const std::string& word) {
  expect_error_naming<E>(
      [&] { io::read_optimizer_state<T>(io::SafeTensors::parse(parts.bytes())); }, word);
}

TEST(OptimizerStateFile, RejectsHostileFiles) {
  StateFileParts ok;
  EXPECT_EQ(io::read_optimizer_state<double>(io::SafeTensors::parse(ok.bytes())).step, 2);

  StateFileParts p;
  p.metadata.erase("format");
  expect_unreadable<IoError>(p, "metadata format: expected \"attnlens optimizer state\", got none");
  p = StateFileParts();
  p.metadata["format"] = "something else";
  expect_unreadable<IoError>(p, "\"something else\"");
  p = StateFileParts();
  p.metadata.erase("optimizer");
  expect_unreadable<IoError>(p, "metadata optimizer");
  p = StateFileParts();
  p.with_step = false;
  expect_unreadable<IoError>(p, "missing tensor 'step'");
  p = StateFileParts();
  p.step_as_float = true;
  expect_unreadable<IoError>(p, "tensor 'step': expected dtype I64, got F32");
  p = StateFileParts();
  p.step = Tensor<std::int64_t>(Shape{1}, {2});
  expect_unreadable<ShapeError>(p, "tensor 'step': expected shape [], got [1]");
  p = StateFileParts();
  p.step = Tensor<std::int64_t>(Shape{}, {-1});
  expect_unreadable<IoError>(p, "tensor 'step': expected >= 0, got -1");
  for (const char* bad : {"exp_avg", "state.exp_avg", "state..exp_avg", "state.fc.weight."}) {
    p = StateFileParts();
    p.tensors.emplace(bad, Tensor<double>(Shape{1}));
    expect_unreadable<IoError>(p, std::string("tensor '") + bad + "'");
  }
  // The file's dtype is the optimizer's: a double state is no float state.
  expect_unreadable<IoError, float>(StateFileParts(),
                                    "expected dtype F32 (the optimizer's type), got F64");
  // Truncated: the safetensors reader's IoError.
  const std::string bytes = ok.bytes();
  expect_error_naming<IoError>([&] { io::SafeTensors::parse(bytes.substr(0, bytes.size() - 3)); },
                               "safetensors");
  expect_error_naming<IoError>(
      [&] { io::load_optimizer_state<double>(state_path("does_not_exist")); }, "does_not_exist");
}

TEST(OptimizerStateFile, RejectsAStateThatDoesNotFitTheModule) {
  TransformerEncoder<float> encoder = state_file_encoder(), gradient = zeros_like(encoder);
  state_file_gradient(encoder, gradient, 0);
  AdamW<float> adam;
  adam.step(encoder, gradient);
  const OptimizerState<float> state = adam.state();
  const std::string path = state_path("misfit");

  // A tensor of another shape: ShapeError naming the file, the tensor, expected and actual.
  OptimizerState<float> wrong = state;
  wrong.tensors[0].value = Tensor<float>({3});
  io::save_optimizer_state(path, wrong);
  AdamW<float> fresh;
  expect_error_naming<ShapeError>(
      [&] { io::load_optimizer_state(path, fresh, encoder); },
      "'layers.0.self_attn.in_proj_weight.exp_avg': expected [24, 8] (192 entries), the shape "
      "of parameter 'layers.0.self_attn.in_proj_weight', got [3] (3 entries)");
  // A missing tensor: IoError naming the file and the tensor.
  OptimizerState<float> missing = state;
  missing.tensors.pop_back();
  io::save_optimizer_state(path, missing);
  expect_error_naming<IoError>([&] { io::load_optimizer_state(path, fresh, encoder); },
                               "layers.1.norm2.bias.exp_avg_sq");
  expect_error_naming<IoError>([&] { io::load_optimizer_state(path, fresh, encoder); }, path);
  // Another optimizer's state.
  SgdOptions so;
  so.lr = 0.1;
  Sgd<float> sgd(so);
  io::save_optimizer_state(path, state);
  expect_error_naming<IoError>([&] { io::load_optimizer_state(path, sgd, encoder); },
                               "expected \"sgd\", got \"adamw\"");
  EXPECT_EQ(fresh.steps(), 0);
  EXPECT_EQ(sgd.steps(), 0);
  io::load_optimizer_state(path, fresh, encoder);  // the right one
  EXPECT_EQ(fresh.steps(), 1);
  std::filesystem::remove(path);
}

TEST(OptimizerStateFile, RejectsABadStateOnWrite) {
  OptimizerState<double> state = two_step_state();
  state.tensors[0].buffer = "exp.avg";
  expect_error_naming<ArgumentError>([&] { io::optimizer_state_bytes(state); }, "'exp.avg'");
  state = two_step_state();
  state.step = -1;
  expect_error_naming<ArgumentError>([&] { io::optimizer_state_bytes(state); }, "step");
  expect_error_naming<IoError>(
      [&] { io::save_optimizer_state("/nonexistent-dir/state.safetensors", two_step_state()); },
      "nonexistent-dir");
}

}  // namespace
}  // namespace attnlens
