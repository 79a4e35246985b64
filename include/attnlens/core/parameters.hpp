// Parameters as data (docs/gradients.md): a module's learned parameters as a list of named views,
// by their state_dict names, in the order of the module's for_each_parameter walk. Gradients are
// a module of the same type (zeros_like), so they have the same names and shapes; optimizers,
// gradient accumulation and clipping work on the two lists side by side.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// One parameter: `size` contiguous entries at `data`, stored with `shape` in a state_dict.
template <class T>
struct NamedParameter {
  std::string name;
  T* data = nullptr;
  Index size = 0;
  Shape shape;
};

namespace detail {

// The callback of a for_each_parameter walk that records each parameter it is handed.
template <class T>
struct ParameterCollector {
  std::vector<NamedParameter<T>>& list;
  void operator()(const std::string& name, Matrix<T>& p) {
    list.push_back({name, p.data(), p.size(), {p.rows(), p.cols()}});
  }
  void operator()(const std::string& name, Vector<T>& p) {
    list.push_back({name, p.data(), p.size(), {p.size()}});
  }
  void operator()(const std::string& name, Matrix<T>& p, const Shape& shape) {
    list.push_back({name, p.data(), p.size(), shape});
  }
};

// Throws unless two lists name the same parameters with the same sizes, in the same order.
template <class T>
void require_same_parameters(const std::vector<NamedParameter<T>>& a,
                             const std::vector<NamedParameter<T>>& b, const char* what) {
  detail::require_shape(a.size() == b.size(), what,
                        detail::concat(a.size(), " parameters like the module"),
                        detail::concat(b.size(), " parameters"));
  for (std::size_t n = 0; n < a.size(); ++n)
    detail::require_shape(a[n].name == b[n].name && a[n].size == b[n].size, what,
                          detail::concat("'", a[n].name, "' with ", a[n].size, " entries"),
                          detail::concat("'", b[n].name, "' with ", b[n].size, " entries"));
}

}  // namespace detail

// Every parameter of a module (any type with a for_each_parameter overload), names prefixed.
template <template <class> class Module, class T>
std::vector<NamedParameter<T>> named_parameters(Module<T>& module, const std::string& prefix = "") {
  std::vector<NamedParameter<T>> list;
  for_each_parameter(module, prefix, detail::ParameterCollector<T>{list});
  return list;
}

// The number of learned scalars of a module.
template <template <class> class Module, class T>
Index parameter_count(Module<T>& module) {
  Index count = 0;
  for (const NamedParameter<T>& p : named_parameters(module)) count += p.size;
  return count;
}

// Every parameter of the module set to 0.
template <template <class> class Module, class T>
void set_zero(Module<T>& module) {
  for (const NamedParameter<T>& p : named_parameters(module))
    std::fill(p.data, p.data + p.size, T(0));
}

// A copy of the module with every parameter 0: the buffers its backward pass accumulates
// gradients into, with the module's names and shapes (and copies of its attached factors).
template <template <class> class Module, class T>
Module<T> zeros_like(const Module<T>& module) {
  Module<T> zeros(module);
  set_zero(zeros);
  return zeros;
}

// into += scale * from, parameter by parameter (gradients of micro-batches computed apart).
// Throws ShapeError when the two modules do not have the same parameters.
template <template <class> class Module, class T>
void add_parameters(Module<T>& into, Module<T>& from, T scale = T(1)) {
  const std::vector<NamedParameter<T>> a = named_parameters(into), b = named_parameters(from);
  detail::require_same_parameters(a, b, "add_parameters: from");
  for (std::size_t n = 0; n < a.size(); ++n)
    for (Index e = 0; e < a[n].size; ++e) a[n].data[e] += scale * b[n].data[e];
}

// Every parameter multiplied by `scale` (clipping a gradient to a global norm).
template <template <class> class Module, class T>
void scale_parameters(Module<T>& module, T scale) {
  for (const NamedParameter<T>& p : named_parameters(module))
    for (Index e = 0; e < p.size; ++e) p.data[e] *= scale;
}

// sqrt of the sum of squares of every parameter, accumulated in double (a gradient's global
// L2 norm, as torch.nn.utils.clip_grad_norm_ computes it).
template <template <class> class Module, class T>
double parameter_norm(Module<T>& module) {
  double sum = 0;
  for (const NamedParameter<T>& p : named_parameters(module))
    for (Index e = 0; e < p.size; ++e)
      sum += static_cast<double>(p.data[e]) * static_cast<double>(p.data[e]);
  return std::sqrt(sum);
}

}  // namespace attnlens
