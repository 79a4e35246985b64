// Loading modules from a PyTorch state_dict saved as safetensors: parameters are looked up
// by their PyTorch names under an optional prefix ("self_attn.", "layers.0.self_attn."),
// with every shape checked against what the module needs.
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/registry.hpp"

namespace attnlens::io {

// The rank-2 tensor `key`, which must be rows x cols (a negative extent accepts any size).
template <class T>
Matrix<T> read_matrix(const SafeTensors& file, const std::string& key, Index rows, Index cols) {
  const Tensor<T> t = file.get<T>(key);
  const bool ok = t.rank() == 2 && (rows < 0 || t.dim(0) == rows) && (cols < 0 || t.dim(1) == cols);
  attnlens::detail::require_shape(
      ok, "tensor '" + key + "'",
      attnlens::detail::concat("[", rows < 0 ? std::string("*") : std::to_string(rows), ", ",
                               cols < 0 ? std::string("*") : std::to_string(cols), "]"),
      attnlens::detail::shape_string(t.shape()));
  return t.matrix();
}

// The rank-1 tensor `key`, which must hold `size` entries.
template <class T>
Vector<T> read_vector(const SafeTensors& file, const std::string& key, Index size) {
  const Tensor<T> t = file.get<T>(key);
  attnlens::detail::require_shape(t.rank() == 1 && t.dim(0) == size, "tensor '" + key + "'",
                                  attnlens::detail::concat("[", size, "]"),
                                  attnlens::detail::shape_string(t.shape()));
  return Eigen::Map<const Vector<T>>(t.data(), size);
}

// The options of an nn.MultiheadAttention state_dict: embed_dim, kdim and vdim from the
// projection shapes, bias from the presence of in_proj_bias.
inline MultiHeadAttentionOptions multi_head_options(const SafeTensors& file,
                                                    const std::string& prefix, Index num_heads) {
  MultiHeadAttentionOptions options;
  options.num_heads = num_heads;
  options.bias = file.contains(prefix + "in_proj_bias");
  if (file.contains(prefix + "in_proj_weight")) {
    const auto& info = file.info(prefix + "in_proj_weight");
    const bool ok = info.shape.size() == 2 && info.shape[1] > 0 && info.shape[0] % 3 == 0 &&
                    info.shape[0] / 3 == info.shape[1];
    attnlens::detail::require_shape(ok, "tensor '" + prefix + "in_proj_weight'", "[3E, E]",
                                    attnlens::detail::shape_string(info.shape));
    options.embed_dim = info.shape[1];
    return options;
  }
  if (!file.contains(prefix + "q_proj_weight"))
    throw IoError("missing tensor '" + prefix + "in_proj_weight' (or '" + prefix +
                  "q_proj_weight', '" + prefix + "k_proj_weight', '" + prefix + "v_proj_weight')");
  // The shapes are checked before the module allocates E x E parameters from them: every
  // size then comes from a tensor the file holds.
  const auto shape_of = [&](const std::string& name, bool square, Index rows) {
    const Shape& shape = file.info(prefix + name).shape;
    const bool ok = shape.size() == 2 && shape[0] == (square ? shape[1] : rows);
    attnlens::detail::require_shape(
        ok, "tensor '" + prefix + name + "'",
        square ? std::string("[E, E]") : attnlens::detail::concat("[", rows, ", *]"),
        attnlens::detail::shape_string(shape));
    return shape;
  };
  options.embed_dim = shape_of("q_proj_weight", true, 0)[1];
  options.kdim = shape_of("k_proj_weight", false, options.embed_dim)[1];
  options.vdim = shape_of("v_proj_weight", false, options.embed_dim)[1];
  return options;
}

// nn.MultiheadAttention from its state_dict entries under `prefix`.
template <class T>
MultiHeadAttention<T> load_multi_head_attention(const SafeTensors& file, const std::string& prefix,
                                                Index num_heads) {
  MultiHeadAttention<T> mha(multi_head_options(file, prefix, num_heads));
  const Index E = mha.embed_dim();
  if (mha.packed()) {
    mha.in_proj_weight = read_matrix<T>(file, prefix + "in_proj_weight", 3 * E, E);
  } else {
    mha.q_proj_weight = read_matrix<T>(file, prefix + "q_proj_weight", E, E);
    mha.k_proj_weight = read_matrix<T>(file, prefix + "k_proj_weight", E, mha.kdim());
    mha.v_proj_weight = read_matrix<T>(file, prefix + "v_proj_weight", E, mha.vdim());
  }
  mha.out_proj.weight = read_matrix<T>(file, prefix + "out_proj.weight", E, E);
  if (mha.has_bias()) {
    mha.in_proj_bias = read_vector<T>(file, prefix + "in_proj_bias", 3 * E);
    mha.out_proj.bias = read_vector<T>(file, prefix + "out_proj.bias", E);
  } else if (file.contains(prefix + "out_proj.bias")) {
    throw IoError("tensor '" + prefix + "out_proj.bias' present without '" + prefix +
                  "in_proj_bias': nn.MultiheadAttention has both biases or neither");
  }
  return mha;
}

// The factor of a registered relative encoding (position/registry.hpp) for a layer of d_model
// and num_heads, with its parameters read from `file` under `prefix`: every tensor the entry
// names is read and its shape checked before the factor is made, so options that would size
// a large table fail on the file's tensor instead of allocating it.
template <class T>
std::shared_ptr<KernelFactor<T>> load_position_factor(const SafeTensors& file,
                                                      const std::string& prefix,
                                                      const PositionOptions& options, Index d_model,
                                                      Index num_heads) {
  const PositionEncoding& encoding = position_encoding(options.type);
  std::map<std::string, Tensor<T>> tensors;
  if (encoding.parameters)
    for (const ParameterShape& p : encoding.parameters(options, d_model, num_heads, prefix)) {
      Tensor<T> t = file.get<T>(prefix + p.name);
      attnlens::detail::require_shape(t.shape() == p.shape, "tensor '" + prefix + p.name + "'",
                                      attnlens::detail::shape_string(p.shape),
                                      attnlens::detail::shape_string(t.shape()));
      tensors.emplace(p.name, std::move(t));
    }
  std::shared_ptr<KernelFactor<T>> factor = encoding.make<T>(options, d_model, num_heads);
  // The registry's shapes and the factor's parameters must agree (tests/position/
  // test_registry.cpp holds them equal); a disagreement is a bug, never a read past a tensor.
  std::size_t visited = 0;
  const auto assign = [&](const std::string& name, auto& parameter) {
    const auto it = tensors.find(name);
    if (it == tensors.end() || it->second.size() != parameter.size())
      throw std::logic_error("position registry: no shape, or another size, for parameter '" +
                             name + "'");
    parameter = Eigen::Map<const std::decay_t<decltype(parameter)>>(
        it->second.data(), parameter.rows(), parameter.cols());
    ++visited;
  };
  attnlens::detail::ParameterCallback<T, decltype(assign)> visit(assign);
  if (factor) factor->visit_parameters("", visit);
  if (visited != tensors.size())
    throw std::logic_error("position registry: declared parameters the factor does not hold");
  return factor;
}

}  // namespace attnlens::io
