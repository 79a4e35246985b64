// One attention head's queries, keys and values drawn from N(0, 1), for the engine tests.
#pragma once

#include <cstdint>

#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::testing {

template <class T>
struct RandomHead {
  Matrix<T> q, k, v;
};

// L queries and S keys of width d, S values of width dv.
template <class T>
RandomHead<T> random_head(Index L, Index S, Index d, Index dv, std::uint64_t seed) {
  Rng rng(seed);
  RandomHead<T> h{Matrix<T>(L, d), Matrix<T>(S, d), Matrix<T>(S, dv)};
  init::normal(h.q, rng);
  init::normal(h.k, rng);
  init::normal(h.v, rng);
  return h;
}

}  // namespace attnlens::testing
