// Residual connections between the layers of an encoder (docs/math.md section 2, residual part):
// standard x_{l+1} = x_l + f_l(x_l), and fidelity x_{l+1} = x_l + f_l(x_l) + lambda_l (x_0 - x_l),
// which pulls every layer's state back towards the stack's input x_0 (NeuTRENO-style), with
// lambda_l fixed by the options or learned (a parameter, fidelity_lambda).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

enum class ResidualType { standard, fidelity };

inline constexpr Named<ResidualType> k_residual_type_names[] = {
    {ResidualType::standard, "standard"}, {ResidualType::fidelity, "fidelity"}};

inline const char* residual_type_name(ResidualType type) {
  return name_of(k_residual_type_names, type);
}

inline ResidualType residual_type_from_name(const std::string& name,
                                            const std::string& what = "residual.type") {
  return value_named(k_residual_type_names, name, what);
}

struct ResidualOptions {
  ResidualType type = ResidualType::standard;
  // Fidelity only: lambda_l for every layer, or a single value shared by all layers.
  // docs/math.md suggests 0.0-0.6 (NeuTRENO: 0.6 vision, 0.4 language).
  std::vector<double> lambda;
  // Fidelity only: lambda is a parameter (the tensor fidelity_lambda, one value per layer)
  // rather than a constant; `lambda` then holds its initial values (none: 0).
  bool learned = false;
};

// The residual variant of a stack of `num_layers` layers. Every layer already adds its own
// standard residual x_l + f_l(x_l) (inside TransformerEncoderLayer, as PyTorch does); the
// fidelity term is added to the layer's output: x_{l+1} = layer_l(x_l) + lambda_l (x_0 - x_l).
// For norm_first layers that is exactly docs/math.md's formula; after a post-norm layer the term
// is added after norm2. lambda = 0 is the standard residual.
template <class T>
struct Residual {
  Residual() = default;

  Residual(const ResidualOptions& options, Index num_layers)
      : type(options.type), learned(options.learned) {
    if (type == ResidualType::standard) {
      detail::require_argument(options.lambda.empty(), "ResidualOptions::lambda",
                               "no values for a standard residual",
                               detail::concat(options.lambda.size(), " values"));
      detail::require_argument(!options.learned, "ResidualOptions::learned",
                               "false for a standard residual", "true");
      return;
    }
    const auto count = static_cast<Index>(options.lambda.size());
    if (learned && count == 0) {
      lambda = Vector<T>::Zero(num_layers);
      return;
    }
    detail::require_argument(count == 1 || count == num_layers, "ResidualOptions::lambda",
                             detail::concat("1 or ", num_layers, " (num_layers) values",
                                            learned ? " or none (learned from 0)" : ""),
                             detail::concat(count, " values"));
    lambda.resize(num_layers);
    for (Index l = 0; l < num_layers; ++l) {
      const double value = options.lambda[static_cast<std::size_t>(count == 1 ? 0 : l)];
      detail::require_argument(std::isfinite(value),
                               detail::concat("ResidualOptions::lambda[", l, "]"), "a finite value",
                               value);
      lambda[l] = static_cast<T>(value);
    }
  }

  // next += lambda_layer (x0 - x) for a fidelity residual; nothing for a standard one.
  void add_fidelity_term(Index layer, ConstMatrixRef<T> x0, ConstMatrixRef<T> x,
                         MatrixRef<T> next) const {
    if (type != ResidualType::fidelity || lambda[layer] == T(0)) return;
    next += lambda[layer] * (x0 - x);
  }

  ResidualType type = ResidualType::standard;
  bool learned = false;  // lambda is a parameter (for_each_parameter names it)
  Vector<T> lambda;      // fidelity: one value per layer; empty for standard
};

// A learned lambda is one tensor of num_layers values, <prefix>fidelity_lambda, as a PyTorch
// model holds it: nn.Parameter(torch.full((num_layers,), init)).
template <class T, class F>
void for_each_parameter(Residual<T>& residual, const std::string& prefix, F&& f) {
  if (residual.learned) f(prefix + "fidelity_lambda", residual.lambda);
}

}  // namespace attnlens
