// The deterministic parameters of the deep-encoder fixtures, the same formula as
// hashed_parameter() in tests/reference/oracles/blocks.py: element k (row-major) of tensor
// `name` is center + scale * (2u - 1), u = (splitmix64(fnv1a64(name) + k) >> 11) * 2^-53.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::testing {

inline std::uint64_t fnv1a64(const std::string& text) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char byte : text) h = (h ^ byte) * 0x100000001B3ull;
  return h;
}

inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// (center, scale): LayerNorm weights (1, 0.2), biases (0, 0.1), weight matrices
// (0, sqrt(3 / fan_in)).
inline std::pair<double, double> hashed_range(const std::string& name, Index fan_in) {
  const auto dot = name.rfind('.');
  const std::string stem = dot == std::string::npos ? std::string() : name.substr(0, dot);
  const auto previous = stem.rfind('.');
  const std::string last = previous == std::string::npos ? stem : stem.substr(previous + 1);
  const bool is_weight = dot != std::string::npos && name.substr(dot) == ".weight";
  if (is_weight && last.rfind("norm", 0) == 0) return {1.0, 0.2};
  if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) return {0.0, 0.1};
  return {0.0, std::sqrt(3.0 / static_cast<double>(fan_in))};
}

inline double hashed_value(const std::string& name, std::uint64_t k, double center, double scale) {
  const double u = static_cast<double>(splitmix64(fnv1a64(name) + k) >> 11) * 0x1p-53;
  return center + scale * (2.0 * u - 1.0);
}

// Sets every parameter of `module` (visited by for_each_parameter) by the formula.
template <class Module>
void fill_hashed_parameters(Module& module) {
  for_each_parameter(module, "", [](const std::string& name, auto& p, const Shape& = {}) {
    using T = typename std::decay_t<decltype(p)>::Scalar;
    const auto [center, scale] = hashed_range(name, p.cols());
    for (Index k = 0; k < p.size(); ++k)
      p.data()[k] =
          static_cast<T>(hashed_value(name, static_cast<std::uint64_t>(k), center, scale));
  });
}

}  // namespace attnlens::testing
