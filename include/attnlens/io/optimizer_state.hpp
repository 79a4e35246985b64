// An optimizer's state (train/optimizer_state.hpp) as a safetensors file, so that a run
// resumes exactly: `step` (I64, shape []), `state.<parameter>.<buffer>` for every buffer
// (`state.blocks.0.norm1.weight.exp_avg`), in the optimizer's scalar type (F32 or F64), and
// metadata `format` and `optimizer` ("sgd", "adamw"). docs/training.md, "Resuming".
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/train/optimizer_state.hpp"

namespace attnlens::io {

inline constexpr const char* k_optimizer_state_format = "attnlens optimizer state";

namespace detail {

template <class T>
SafeTensorsWriter optimizer_state_writer(const OptimizerState<T>& state) {
  using attnlens::detail::concat;
  attnlens::detail::require_argument(state.step >= 0, "optimizer state step", ">= 0", state.step);
  attnlens::detail::require_argument(!state.optimizer.empty(), "optimizer state optimizer",
                                     "a name", "none");
  SafeTensorsWriter writer;
  writer.set_metadata("format", k_optimizer_state_format);
  writer.set_metadata("optimizer", state.optimizer);
  writer.add("step", Tensor<std::int64_t>(Shape{}, {state.step}));
  for (const StateTensor<T>& t : state.tensors) {
    // The reader splits a name at its last dot: the buffer's name must hold none.
    attnlens::detail::require_argument(
        !t.parameter.empty() && !t.buffer.empty() && t.buffer.find('.') == std::string::npos,
        "optimizer state tensor", "a parameter name and a buffer name without dots",
        concat("'", t.parameter, "', '", t.buffer, "'"));
    writer.add("state." + t.name(), t.value);
  }
  return writer;
}

}  // namespace detail

// ArgumentError for a state that names no optimizer or has a negative step.
template <class T>
std::string optimizer_state_bytes(const OptimizerState<T>& state) {
  return detail::optimizer_state_writer(state).bytes();
}

// Written to `path`.tmp and renamed over `path`: an interrupted save leaves the previous state
// file whole, so a run can still resume from it.
template <class T>
void save_optimizer_state(const std::string& path, const OptimizerState<T>& state) {
  const std::string temporary = path + ".tmp";
  detail::optimizer_state_writer(state).save(temporary);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temporary.c_str());
    throw IoError(attnlens::detail::concat("optimizer state: cannot rename '", temporary, "' to '",
                                           path, "': ", detail::errno_message(error)));
  }
}

// The state a file holds, every name, dtype and the step checked: IoError for a file that is
// no optimizer state, a tensor outside the layout or in another dtype than T's (converting would
// not resume exactly), ShapeError for a step that is not a scalar. Whether the tensors fit a
// module is the optimizer's load_state check (or load_optimizer_state below).
template <class T>
OptimizerState<T> read_optimizer_state(const SafeTensors& file) {
  using attnlens::detail::concat;
  const std::string where = file.source().empty() ? "optimizer state" : "'" + file.source() + "'";
  const auto& metadata = file.metadata();
  const auto format = metadata.find("format");
  if (format == metadata.end() || format->second != k_optimizer_state_format)
    throw IoError(concat(where, ": metadata format: expected \"", k_optimizer_state_format,
                         "\", got ",
                         format == metadata.end() ? "none" : "\"" + format->second + "\""));
  const auto optimizer = metadata.find("optimizer");
  if (optimizer == metadata.end() || optimizer->second.empty())
    throw IoError(where + ": metadata optimizer: expected a name, got none");

  OptimizerState<T> state;
  state.optimizer = optimizer->second;
  const TensorInfo& step = file.info("step");
  if (step.dtype != DType::I64)
    throw IoError(
        concat(where, ": tensor 'step': expected dtype I64, got ", dtype_name(step.dtype)));
  attnlens::detail::require_shape(step.shape.empty(), where + ": tensor 'step'", "shape []",
                                  attnlens::detail::shape_string(step.shape));
  state.step = file.get<std::int64_t>("step").data()[0];
  if (state.step < 0)
    throw IoError(concat(where, ": tensor 'step': expected >= 0, got ", state.step));

  const std::string prefix = "state.";
  for (const std::string& name : file.names()) {
    if (name == "step") continue;
    const std::size_t dot = name.rfind('.');
    if (name.compare(0, prefix.size(), prefix) != 0 || dot == std::string::npos ||
        dot <= prefix.size() || dot + 1 == name.size())
      throw IoError(
          concat(where, ": tensor '", name, "': expected 'step' or 'state.<parameter>.<buffer>'"));
    const DType dtype = file.info(name).dtype;
    if (dtype != attnlens::io::detail::natural_dtype<T>())
      throw IoError(concat(where, ": tensor '", name, "': expected dtype ",
                           dtype_name(attnlens::io::detail::natural_dtype<T>()),
                           " (the optimizer's type), got ", dtype_name(dtype)));
    state.tensors.push_back(
        {name.substr(prefix.size(), dot - prefix.size()), name.substr(dot + 1), file.get<T>(name)});
  }
  return state;
}

template <class T>
OptimizerState<T> load_optimizer_state(const std::string& path) {
  return read_optimizer_state<T>(SafeTensors::load(path));
}

// Reads the file and restores it into `optimizer` (Sgd<T>, AdamW<T>) for `module`'s
// parameters. A file that does not fit the module and options is an IoError (a tensor missing
// or left over, another optimizer) or a ShapeError (a tensor of another shape than its
// parameter), naming the file; the optimizer is unchanged then.
template <class Optimizer, template <class> class Module, class T>
void load_optimizer_state(const std::string& path, Optimizer& optimizer, Module<T>& module) {
  const OptimizerState<T> state = load_optimizer_state<T>(path);
  try {
    optimizer.load_state(state, module);
  } catch (const ShapeError& e) {
    throw ShapeError("'" + path + "': " + e.what());
  } catch (const ArgumentError& e) {
    throw IoError("'" + path + "': " + e.what());
  }
}

}  // namespace attnlens::io
