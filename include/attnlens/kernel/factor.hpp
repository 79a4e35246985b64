// What every kernel factor (score term, query/key transform, value term) offers besides its
// forward step: it names and visits its learned parameters, so that a module's parameter walk
// reaches the factors attached to it (save, load, training), and it copies itself deeply, so
// that a copied module never shares a table with the original. A factor's backward pass will
// sit beside its forward step, in its own header.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "attnlens/core/init.hpp"
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

}  // namespace detail

namespace detail {

// A copy of one factor: its clone, or the factor itself when it may be shared (clone() null).
template <class T>
std::shared_ptr<KernelFactor<T>> copy_factor(const std::shared_ptr<KernelFactor<T>>& factor) {
  if (!factor) return factor;
  std::shared_ptr<KernelFactor<T>> clone = factor->clone();
  return clone ? clone : factor;
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
