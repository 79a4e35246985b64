// Parameter initialisation with PyTorch's default distributions, from a seeded generator:
// nn.Linear (kaiming_uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
// weight and bias) and xavier_uniform (nn.MultiheadAttention's in_proj_weight).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// The random source for initialisation and random test data. Seeded, so runs repeat.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) : engine_(seed) {}

  template <class T>
  T uniform(T low, T high) {
    return std::uniform_real_distribution<T>(low, high)(engine_);
  }
  template <class T>
  T normal(T mean = T(0), T stddev = T(1)) {
    return std::normal_distribution<T>(mean, stddev)(engine_);
  }

 private:
  std::mt19937_64 engine_;
};

namespace init {

// Fills m with U(-bound, bound).
template <class Derived>
void uniform(Eigen::DenseBase<Derived>& m, typename Derived::Scalar bound, Rng& rng) {
  using T = typename Derived::Scalar;
  if (!(bound >= T(0)))
    throw ArgumentError(detail::concat("init::uniform bound: expected >= 0, got ", bound));
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = rng.uniform<T>(-bound, bound);
}

// Fills m with N(0, 1) (random inputs for tests, demos and benchmarks).
template <class Derived>
void normal(Eigen::DenseBase<Derived>& m, Rng& rng) {
  using T = typename Derived::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = rng.normal<T>();
}

// torch.nn.init.xavier_uniform_ for a weight of shape fan_out x fan_in.
template <class Derived>
void xavier_uniform(Eigen::DenseBase<Derived>& weight, Rng& rng) {
  using T = typename Derived::Scalar;
  const T fan_sum = static_cast<T>(weight.rows() + weight.cols());
  uniform(weight, fan_sum > 0 ? std::sqrt(T(6) / fan_sum) : T(0), rng);
}

// nn.Linear.reset_parameters: weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
template <class Derived>
void linear_uniform(Eigen::DenseBase<Derived>& m, Index fan_in, Rng& rng) {
  using T = typename Derived::Scalar;
  uniform(m, fan_in > 0 ? T(1) / std::sqrt(static_cast<T>(fan_in)) : T(0), rng);
}

}  // namespace init
}  // namespace attnlens
