// Dropout as torch.nn.Dropout in training mode: y = x (*) m / (1 - p), m_i ~ Bernoulli(1 - p);
// off (the identity) at inference. The mask is a function of a 64-bit key and each element's
// index (a counter-based generator: SplitMix64's output function of key + index), so it is never
// stored: a backward pass regenerates it from the key, it is the same with any number of
// threads, and a run resumed after any step draws what the uninterrupted run draws.
#pragma once

#include <cmath>
#include <cstdint>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// The key of part `index` of the draw keyed `key` (a layer of a stack, a site of a layer, a step
// of a run): its own mask, unrelated to its siblings'.
constexpr std::uint64_t dropout_part_key(std::uint64_t key, std::uint64_t index) {
  return detail::mix64(key ^ detail::mix64((index + 1) * detail::k_golden_gamma));
}

inline void check_dropout_probability(double p, const char* what) {
  // p = 1 would scale by 1 / 0; PyTorch returns zeros there, which trains nothing.
  detail::require_argument(std::isfinite(p) && p >= 0 && p < 1, what, "a probability in [0, 1)", p);
}

// One dropout draw: which elements a site drops, by its key.
class Dropout {
 public:
  Dropout() = default;  // off
  Dropout(double p, std::uint64_t key) : p_(p), key_(key) {
    check_dropout_probability(p, "Dropout p");
    // Element i is kept when its 64-bit draw is >= p 2^64: probability 1 - p to within 2^-64.
    // p <= 1 - 2^-53, so p 2^64 < 2^64 converts.
    threshold_ = static_cast<std::uint64_t>(std::ldexp(p, 64));
  }

  bool active() const { return p_ > 0; }
  double p() const { return p_; }
  std::uint64_t key() const { return key_; }

  // The draw of a part of this one (a site of a layer): its own key, the same p.
  Dropout part(std::uint64_t index) const { return Dropout(p_, dropout_part_key(key_, index)); }

  bool keeps(std::uint64_t index) const {
    return detail::mix64(key_ + (index + 1) * detail::k_golden_gamma) >= threshold_;
  }

  // x (*)= m / (1 - p), x's elements numbered row by row. The forward pass and the backward pass
  // (dx = dy (*) m / (1 - p)) are the same operation with the same key.
  template <class T>
  void apply(MatrixRef<T> x) const {
    if (!active()) return;
    const T scale = static_cast<T>(1.0 / (1.0 - p_));
    const auto cols = static_cast<std::uint64_t>(x.cols());
    for (Index r = 0; r < x.rows(); ++r)
      for (Index c = 0; c < x.cols(); ++c)
        x(r, c) = keeps(static_cast<std::uint64_t>(r) * cols + static_cast<std::uint64_t>(c))
                      ? x(r, c) * scale
                      : T(0);
  }

 private:
  double p_ = 0;
  std::uint64_t key_ = 0;
  std::uint64_t threshold_ = 0;
};

}  // namespace attnlens
