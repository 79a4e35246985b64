// An optimizer's state as data, so that a run resumes exactly (docs/training.md, "Resuming"):
// the step count and every per-parameter buffer under torch.optim's names (momentum_buffer,
// exp_avg, exp_avg_sq, max_exp_avg_sq), each shaped like its parameter. io/optimizer_state.hpp
// writes it to a file. Also the parameter binding the optimizers share: the names and shapes
// of the first step (or of a restored state), which every later step must present again.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/train/parameter_groups.hpp"

namespace attnlens {

// One buffer of one parameter: `parameter` is the parameter's state_dict name, `buffer` one of
// the optimizer's buffer names (no dots), `value` has the parameter's stored shape.
template <class T>
struct StateTensor {
  std::string parameter;
  std::string buffer;
  Tensor<T> value;

  std::string name() const { return parameter + "." + buffer; }
};

template <class T>
struct OptimizerState {
  std::string optimizer;  // "sgd" or "adamw": a state restores into its own kind only
  std::int64_t step = 0;  // optimizer steps taken
  // In the parameters' order, each parameter's buffers in the optimizer's order. Empty before
  // the first step, as torch.optim's state is.
  std::vector<StateTensor<T>> tensors;
};

namespace detail {

// The parameters an optimizer steps, as its first step (or load_state) presented them.
struct BoundParameter {
  std::string name;
  Index size = 0;
  Shape shape;
  bool decay = true;  // weight decay applies (parameter_groups.hpp)
};

inline std::string shape_and_size(const Shape& shape) {
  return concat(shape_string(shape), " (", shape_size(shape), " entries)");
}

// Throws unless gradients[n] is parameters[n]'s gradient (same name and size, other storage).
template <class T>
void check_gradients(const std::vector<NamedParameter<T>>& parameters,
                     const std::vector<NamedParameter<T>>& gradients, const std::string& who) {
  require_same_parameters(parameters, gradients, (who + ": gradient").c_str());
  for (std::size_t n = 0; n < parameters.size(); ++n)
    require_argument(parameters[n].data != gradients[n].data || parameters[n].size == 0,
                     concat(who, ": gradient '", gradients[n].name, "'"),
                     "a buffer of its own (make the gradient module with zeros_like(module))",
                     "the parameter itself");
}

// The binding of a first step or of load_state; decay flags from the patterns.
template <class T>
std::vector<BoundParameter> bind_parameters(const std::vector<NamedParameter<T>>& parameters,
                                            const std::vector<std::string>& no_weight_decay) {
  std::vector<BoundParameter> bound;
  bound.reserve(parameters.size());
  std::map<std::string, std::size_t> seen;
  for (const NamedParameter<T>& p : parameters) {
    // Names key the saved state: two parameters under one name could not be told apart.
    require_argument(seen.emplace(p.name, bound.size()).second, "parameters", "unique names",
                     concat("'", p.name, "' twice"));
    require_shape(shape_size(p.shape) == p.size, concat("parameter '", p.name, "'"),
                  concat("a shape of ", p.size, " entries"), shape_string(p.shape));
    bound.push_back(
        {p.name, p.size, p.shape, !excluded_from_weight_decay(p.name, no_weight_decay)});
  }
  return bound;
}

inline void set_decay(std::vector<BoundParameter>& bound,
                      const std::vector<std::string>& no_weight_decay) {
  for (BoundParameter& p : bound) p.decay = !excluded_from_weight_decay(p.name, no_weight_decay);
}

// Throws unless `parameters` are the bound ones: same names and sizes in the same order.
template <class T>
void check_bound(const std::vector<BoundParameter>& bound,
                 const std::vector<NamedParameter<T>>& parameters, const std::string& who) {
  const std::string what = who + ": parameters (as on the first step or in the loaded state)";
  require_shape(bound.size() == parameters.size(), what, concat(bound.size(), " parameters"),
                concat(parameters.size(), " parameters"));
  for (std::size_t n = 0; n < bound.size(); ++n)
    require_shape(bound[n].name == parameters[n].name && bound[n].size == parameters[n].size, what,
                  concat("'", bound[n].name, "' with ", bound[n].size, " entries"),
                  concat("'", parameters[n].name, "' with ", parameters[n].size, " entries"));
}

// One kind of buffer an optimizer keeps per parameter, for save and restore.
template <class T>
struct BufferKind {
  const char* name;                // torch.optim's name
  std::vector<Vector<T>>* values;  // one per bound parameter (restored in place)
  bool expected;                   // load_state requires it for every parameter
  bool optional;                   // or accepts it for every parameter or for none
  bool non_negative;               // second moments: a negative value is a corrupt state
  const char* unused = "";         // neither expected nor optional: why (for the message)
};

template <class T>
Tensor<T> buffer_tensor(const BoundParameter& p, const Vector<T>& values) {
  Tensor<T> t(p.shape);
  std::copy(values.data(), values.data() + values.size(), t.data());
  return t;
}

// The state of the bound parameters: every buffer that holds values, parameter by parameter,
// `buffers` naming each kind in the optimizer's order.
template <class T>
OptimizerState<T> export_state(
    const char* optimizer, std::int64_t step, const std::vector<BoundParameter>& bound,
    const std::vector<std::pair<const char*, const std::vector<Vector<T>>*>>& buffers) {
  OptimizerState<T> state;
  state.optimizer = optimizer;
  state.step = step;
  for (std::size_t n = 0; n < bound.size(); ++n)
    for (const auto& [name, values] : buffers)
      if (values->size() == bound.size())
        state.tensors.push_back({bound[n].name, name, buffer_tensor(bound[n], (*values)[n])});
  return state;
}

// Fills every kind's values from `state` for the bound parameters, after checking: the
// optimizer's kind, step >= 0, no tensor of another parameter or buffer, none twice, every
// expected buffer present (an optional kind for all parameters or none), each of its
// parameter's shape. Kinds absent from the state are left empty. Nothing is changed on error.
template <class T>
void import_state(const OptimizerState<T>& state, const char* optimizer,
                  const std::vector<BoundParameter>& bound, const std::vector<BufferKind<T>>& kinds,
                  const std::string& who) {
  require_argument(state.optimizer == optimizer, who + ": state.optimizer",
                   concat("\"", optimizer, "\""), concat("\"", state.optimizer, "\""));
  require_argument(state.step >= 0, who + ": state.step", ">= 0", state.step);
  std::map<std::string, std::size_t> parameter_index, kind_index;
  for (std::size_t n = 0; n < bound.size(); ++n) parameter_index.emplace(bound[n].name, n);
  for (std::size_t k = 0; k < kinds.size(); ++k) kind_index.emplace(kinds[k].name, k);

  // found[k][n]: the state tensor holding kind k of parameter n.
  std::vector<std::vector<const StateTensor<T>*>> found(
      kinds.size(), std::vector<const StateTensor<T>*>(bound.size(), nullptr));
  std::vector<std::size_t> count(kinds.size(), 0);
  std::string buffer_names;
  for (const BufferKind<T>& kind : kinds)
    buffer_names += concat(buffer_names.empty() ? "" : ", ", kind.name);
  for (const StateTensor<T>& t : state.tensors) {
    const std::string what = concat(who, ": state tensor '", t.name(), "'");
    const auto p = parameter_index.find(t.parameter);
    require_argument(p != parameter_index.end(), what, "the name of a parameter of the module",
                     concat("'", t.parameter, "'"));
    const auto k = kind_index.find(t.buffer);
    require_argument(k != kind_index.end(), what, concat("a buffer named ", buffer_names),
                     concat("'", t.buffer, "'"));
    const BufferKind<T>& kind = kinds[k->second];
    require_argument(state.step > 0, what, "no buffers in a state of step 0", "a buffer");
    require_argument(kind.expected || kind.optional, what,
                     concat("no '", t.buffer, "' buffer (", kind.unused, ")"), "one");
    require_argument(found[k->second][p->second] == nullptr, what, "one tensor", "two");
    const BoundParameter& param = bound[p->second];
    require_shape(
        t.value.shape() == param.shape, what,
        concat(shape_and_size(param.shape), ", the shape of parameter '", param.name, "'"),
        shape_and_size(t.value.shape()));
    if (kind.non_negative)
      for (Index e = 0; e < t.value.size(); ++e)
        require_argument(t.value.data()[e] >= T(0), concat(what, " entry ", e),
                         "a value >= 0 (a second moment)", t.value.data()[e]);
    found[k->second][p->second] = &t;
    ++count[k->second];
  }
  for (std::size_t k = 0; k < kinds.size(); ++k) {
    const bool all = count[k] == bound.size();
    const bool required = kinds[k].expected && state.step > 0;
    if (all || (count[k] == 0 && !required)) continue;
    std::size_t missing = 0;
    while (found[k][missing]) ++missing;
    throw ArgumentError(concat(who, ": state tensor '", bound[missing].name, ".", kinds[k].name,
                               "': expected for every parameter", required ? "" : " or for none",
                               ", got none"));
  }
  for (std::size_t k = 0; k < kinds.size(); ++k) {
    std::vector<Vector<T>>& values = *kinds[k].values;
    values.clear();
    if (count[k] == 0) continue;
    values.resize(bound.size());
    for (std::size_t n = 0; n < bound.size(); ++n)
      values[n] = Eigen::Map<const Vector<T>>(found[k][n]->value.data(), bound[n].size);
  }
}

// What every optimizer shares: its options, the step count, the binding to the parameters of
// its first step (or of load_state), and stepping or restoring a module by its parameter walk.
// CRTP: Derived has step(parameters, gradients), set_options(options) and
// load_state(state, parameters), and brings step and load_state into scope (`using`).
template <class Derived, class T, class Options>
class OptimizerBase {
 public:
  const Options& options() const { return options_; }
  std::int64_t steps() const { return steps_; }

  // The options with another learning rate (a schedule's), from the next step on.
  void set_learning_rate(double lr) {
    Options o = options_;
    o.lr = lr;
    derived().set_options(o);
  }

  template <template <class> class Module>
  void step(Module<T>& module, Module<T>& gradient) {
    derived().step(named_parameters(module), named_parameters(gradient));
  }

  template <template <class> class Module>
  void load_state(const OptimizerState<T>& state, Module<T>& module) {
    derived().load_state(state, named_parameters(module));
  }

 protected:
  explicit OptimizerBase(const Options& options) : options_(options) {}

  // Binds to `parameters` on the first step; checks them against the binding afterwards.
  void bind_or_check(const std::vector<NamedParameter<T>>& parameters, const std::string& who) {
    if (bound_once_) return check_bound(bound_, parameters, who);
    bind(bind_parameters(parameters, options_.no_weight_decay), 0);
  }
  // A restored binding and step count (load_state, after its checks).
  void bind(std::vector<BoundParameter> bound, std::int64_t steps) {
    bound_ = std::move(bound);
    bound_once_ = true;
    steps_ = steps;
  }

  Options options_;
  std::int64_t steps_ = 0;
  std::vector<BoundParameter> bound_;
  bool bound_once_ = false;  // bound_ may be empty: a module without parameters

 private:
  Derived& derived() { return static_cast<Derived&>(*this); }
};

}  // namespace detail
}  // namespace attnlens
