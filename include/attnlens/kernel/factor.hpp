// What every kernel factor (score term, query/key transform, value term) offers besides its
// forward step: it names and visits its learned parameters, so that a module's parameter walk
// reaches the factors attached to it (save, load, training), and it copies itself deeply, so
// that a copied module never shares a table with the original. A factor's backward pass will
// sits beside its forward step, in its own header, and accumulates the gradients of its
// parameters into a factor of its own type (the gradient of a factor is a factor: zeroed_copy).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// Receives each parameter of a walk under its full state_dict name.
template <class T>
class ParameterVisitor {
 public:
  virtual ~ParameterVisitor() = default;
  virtual void operator()(const std::string& name, Matrix<T>& parameter) = 0;
  virtual void operator()(const std::string& name, Vector<T>& parameter) = 0;
};

template <class T>
class KernelFactor {
 public:
  virtual ~KernelFactor() = default;
  // visit(prefix + name, parameter) for every learned parameter, by the names of the paper's
  // code. A factor without parameters visits nothing.
  virtual void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) {
    (void)prefix;
    (void)visit;
  }
  // The factor's own initialisation of its learned parameters (its paper's code's).
  virtual void reset_parameters(Rng& rng) { (void)rng; }
  // A deep copy. The default, null, means "copies may share this object": right for a factor
  // whose state never changes after construction; a factor with parameters (or any state a
  // user may change) must override it, as every factor of attnlens does.
  virtual std::shared_ptr<KernelFactor<T>> clone() const { return nullptr; }
};

namespace detail {

// A ParameterVisitor over a generic callable f(name, Matrix<T>&) / f(name, Vector<T>&), as
// the modules' for_each_parameter functions take.
template <class T, class F>
class ParameterCallback final : public ParameterVisitor<T> {
 public:
  explicit ParameterCallback(F& f) : f_(f) {}
  void operator()(const std::string& name, Matrix<T>& parameter) override { f_(name, parameter); }
  void operator()(const std::string& name, Vector<T>& parameter) override { f_(name, parameter); }

 private:
  F& f_;
};

// Every parameter of a factor, as data (core/parameters.hpp).
template <class T>
std::vector<NamedParameter<T>> factor_parameters(KernelFactor<T>& factor) {
  std::vector<NamedParameter<T>> list;
  ParameterCollector<T> collect{list};
  ParameterCallback<T, ParameterCollector<T>> visit(collect);
  factor.visit_parameters("", visit);
  return list;
}

// A copy of one factor: its clone, or the factor itself when it may be shared (clone() null).
template <class T>
std::shared_ptr<KernelFactor<T>> copy_factor(const std::shared_ptr<KernelFactor<T>>& factor) {
  if (!factor) return factor;
  std::shared_ptr<KernelFactor<T>> clone = factor->clone();
  return clone ? clone : factor;
}

// The factor a backward pass accumulates `factor`'s parameter gradients into: a deep copy with
// every parameter 0 (null for a factor without parameters).
template <class T>
std::shared_ptr<KernelFactor<T>> zeroed_copy(const KernelFactor<T>& factor) {
  std::shared_ptr<KernelFactor<T>> copy = factor.clone();
  if (!copy) return nullptr;
  for (const NamedParameter<T>& p : factor_parameters(*copy))
    std::fill(p.data, p.data + p.size, T(0));
  return copy;
}

// into's parameters += from's, for two factors of one type (per-thread gradients summed).
template <class T>
void add_factor_parameters(KernelFactor<T>& into, KernelFactor<T>& from) {
  const std::vector<NamedParameter<T>> a = factor_parameters(into), b = factor_parameters(from);
  require_same_parameters(a, b, "add_factor_parameters: from");
  for (std::size_t n = 0; n < a.size(); ++n)
    for (Index e = 0; e < a[n].size; ++e) a[n].data[e] += b[n].data[e];
}

// The gradient factor handed to `Factor`'s backward as a Factor, or null when none is wanted;
// throws ArgumentError when it is a factor of another type.
template <class Factor, class T>
Factor* gradient_as(KernelFactor<T>* gradient) {
  if (!gradient) return nullptr;
  auto* typed = dynamic_cast<Factor*>(gradient);
  require_argument(typed != nullptr, "gradient of a kernel factor",
                   "a factor of the same type as the one differentiated", "another type");
  return typed;
}

// Deep copies of factor lists that keep their sharing: a factor listed twice (Shaw's, among
// the score and the value terms) has one copy, listed twice.
template <class T>
class FactorCopies {
 public:
  template <class Factor>
  std::vector<std::shared_ptr<Factor>> of(const std::vector<std::shared_ptr<Factor>>& list) {
    std::vector<std::shared_ptr<Factor>> copies;
    for (const auto& factor : list) copies.push_back(copy(factor));
    return copies;
  }
  template <class Factor>
  std::shared_ptr<Factor> copy(const std::shared_ptr<Factor>& factor) {
    const KernelFactor<T>* key = factor.get();
    auto it = copies_.find(key);
    if (it == copies_.end())
      it = copies_.emplace(key, copy_factor<T>(std::shared_ptr<KernelFactor<T>>(factor))).first;
    return std::dynamic_pointer_cast<Factor>(it->second);
  }

 private:
  std::map<const KernelFactor<T>*, std::shared_ptr<KernelFactor<T>>> copies_;
};

// Visits the parameters of every factor of the lists under `prefix`, each factor once.
template <class T, class... Lists>
void visit_factor_parameters(const std::string& prefix, ParameterVisitor<T>& visit,
                             Lists&... lists) {
  std::set<const KernelFactor<T>*> seen;
  const auto walk = [&](auto& list) {
    for (const auto& factor : list)
      if (seen.insert(factor.get()).second) factor->visit_parameters(prefix, visit);
  };
  (walk(lists), ...);
}

}  // namespace detail

}  // namespace attnlens
