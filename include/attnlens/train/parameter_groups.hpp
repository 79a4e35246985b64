// Parameter groups for weight decay (docs/training.md, "Weight decay"): which parameters an
// optimizer decays, decided by their state_dict names. A pattern matches the last components of
// a name, so "bias" matches "layers.0.linear1.bias"; the default patterns leave out biases,
// LayerNorm weights, the CLS token, every position table and the variants' own parameters.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/parameters.hpp"

namespace attnlens {

// The names that get no weight decay by default, as patterns (matches_parameter_pattern).
// Decay pulls a parameter towards 0; for these 0 is no neutral value (a norm's scale of 1, a
// kernel width, a bilateral sigma) or the parameter is a table indexed by position, whose rows
// see few gradient steps each. Keep tests/train/test_parameter_groups.cpp's walk of the
// position registry passing when an encoding with new parameter names is added.
inline std::vector<std::string> default_no_weight_decay() {
  return {
      "*bias",  // every bias, in_proj_bias, Transformer-XL's r_w_bias
      "norm*.weight",
      "*norm.weight",                    // LayerNorm: norm, norm1, norm2 (PyTorch, timm), fc_norm
      "cls_token",                       // VisionTransformer
      "pos_embed",                       // VisionTransformer's learned absolute table
      "position_embeddings.weight",      // TransformerEncoder's learned absolute table
      "relative_attention_bias.weight",  // T5
      "relative_keys",
      "relative_values",  // Shaw
      "r_net.weight",     // Transformer-XL (r_w_bias, r_r_bias: "*bias")
      "row_embeddings.weight",
      "col_embeddings.weight",  // learned 2-D relative
      "head_keys_row.weight",
      "head_keys_col.weight",
      "alpha",
      "center_shift",
      "inverse_covariance",  // quadratic (isotropic, generalized)
      "width",               // Cauchy
      "sigma",               // a distance kernel attached directly
      "rho",
      "fourier_r",        // bilateral, FourierFormer
      "fidelity_lambda",  // the fidelity residual's learned lambda
  };
}

namespace detail {

// Module overloads take any type with a for_each_parameter; this keeps a parameter list itself
// (std::vector matches `template <class> class Module` under C++17's relaxed matching) on the
// list overloads.
template <class X>
struct is_parameter_list : std::false_type {};
template <class T>
struct is_parameter_list<std::vector<NamedParameter<T>>> : std::true_type {};
template <template <class> class Module, class T>
using if_module = std::enable_if_t<!is_parameter_list<Module<T>>::value, int>;

// Glob match of one name component: '*' stands for any run of characters (none included).
// The usual greedy walk: on a mismatch, the last '*' takes one more character.
inline bool component_matches(const char* pattern, std::size_t pattern_size, const char* text,
                              std::size_t text_size) {
  std::size_t p = 0, t = 0, star = std::string::npos, resume = 0;
  while (t < text_size) {
    if (p < pattern_size && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (p < pattern_size && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern_size && pattern[p] == '*') ++p;
  return p == pattern_size;
}

// The components of a dotted name ("layers.0.norm1.weight" -> layers, 0, norm1, weight).
inline std::vector<std::string> name_components(const std::string& name) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    const std::size_t dot = name.find('.', begin);
    parts.push_back(name.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (dot == std::string::npos) return parts;
    begin = dot + 1;
  }
}

inline void check_parameter_pattern(const std::string& pattern, const std::string& what) {
  bool ok = !pattern.empty();
  for (const std::string& part : name_components(pattern)) ok = ok && !part.empty();
  require_argument(ok, what, "a non-empty pattern of dot-separated, non-empty components",
                   concat("'", pattern, "'"));
}

inline void check_parameter_patterns(const std::vector<std::string>& patterns,
                                     const std::string& what) {
  for (std::size_t i = 0; i < patterns.size(); ++i)
    check_parameter_pattern(patterns[i], concat(what, "[", i, "]"));
}

}  // namespace detail

// Whether `pattern` matches the last components of the parameter name `name`: a pattern of k
// dot-separated components matches a name of at least k components whose last k match one by
// one, '*' standing for any run of characters inside a component (never across a dot). So
// "bias" matches "bias" and "out_proj.bias", "norm*.weight" matches "layers.0.norm1.weight"
// but not "layers.0.norm1.extra.weight", and a full name matches only itself at the top.
inline bool matches_parameter_pattern(const std::string& pattern, const std::string& name) {
  const std::vector<std::string> p = detail::name_components(pattern);
  const std::vector<std::string> n = detail::name_components(name);
  if (p.size() > n.size()) return false;
  const std::size_t skip = n.size() - p.size();
  for (std::size_t i = 0; i < p.size(); ++i)
    if (!detail::component_matches(p[i].data(), p[i].size(), n[skip + i].data(),
                                   n[skip + i].size()))
      return false;
  return true;
}

// Whether any of `no_weight_decay` matches `name`.
inline bool excluded_from_weight_decay(const std::string& name,
                                       const std::vector<std::string>& no_weight_decay) {
  for (const std::string& pattern : no_weight_decay)
    if (matches_parameter_pattern(pattern, name)) return true;
  return false;
}

// The two groups of torch.optim's usual setup, [{"params": decayed}, {"params": not_decayed,
// "weight_decay": 0}], by name in the module's parameter order.
struct WeightDecayGroups {
  std::vector<std::string> decayed;
  std::vector<std::string> not_decayed;
};

template <class T>
WeightDecayGroups weight_decay_groups(const std::vector<NamedParameter<T>>& parameters,
                                      const std::vector<std::string>& no_weight_decay) {
  detail::check_parameter_patterns(no_weight_decay, "no_weight_decay");
  WeightDecayGroups groups;
  for (const NamedParameter<T>& p : parameters)
    (excluded_from_weight_decay(p.name, no_weight_decay) ? groups.not_decayed : groups.decayed)
        .push_back(p.name);
  return groups;
}

template <template <class> class Module, class T, detail::if_module<Module, T> = 0>
WeightDecayGroups weight_decay_groups(
    Module<T>& module,
    const std::vector<std::string>& no_weight_decay = default_no_weight_decay()) {
  return weight_decay_groups(named_parameters(module), no_weight_decay);
}

}  // namespace attnlens
