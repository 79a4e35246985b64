// Loading attnlens modules (Linear, LayerNorm, FeedForward, encoder layers, encoders, the
// vision transformer) from a PyTorch state_dict saved as safetensors: every parameter the
// module's for_each_parameter names is read under `prefix`, with its shape checked.
#pragma once

#include <set>
#include <string>
#include <type_traits>

#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/state_dict.hpp"

namespace attnlens::io {

// Fills the module's parameters (already sized by its options) from `file`; a missing tensor
// is an IoError and a tensor of another shape a ShapeError, both naming the tensor. Returns
// the names read, so that a caller can reject tensors the module does not have.
//
// for_each_parameter calls f(name, parameter) with a Matrix<T> or Vector<T>, or
// f(name, parameter, stored_shape) for a parameter PyTorch stores with another shape than the
// matrix attnlens computes with (a Conv2d weight [E, C, P, P] held as E x C*P*P, a pos_embed
// [1, N, E] held as N x E): same elements, same order.
template <class Module>
std::set<std::string> load_parameters(const SafeTensors& file, const std::string& prefix,
                                      Module& module) {
  std::set<std::string> names;
  for_each_parameter(
      module, prefix, [&](const std::string& name, auto& parameter, const Shape& stored = {}) {
        using Parameter = std::decay_t<decltype(parameter)>;
        using T = typename Parameter::Scalar;
        if (!stored.empty()) {
          const Tensor<T> t = file.get<T>(name);
          attnlens::detail::require_shape(t.shape() == stored, "tensor '" + name + "'",
                                          attnlens::detail::shape_string(stored),
                                          attnlens::detail::shape_string(t.shape()));
          parameter = Eigen::Map<const Parameter>(t.data(), parameter.rows(), parameter.cols());
        } else if constexpr (Parameter::ColsAtCompileTime == 1) {
          parameter = read_vector<T>(file, name, parameter.size());
        } else {
          parameter = read_matrix<T>(file, name, parameter.rows(), parameter.cols());
        }
        names.insert(name);
      });
  return names;
}

}  // namespace attnlens::io
