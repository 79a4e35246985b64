// PortableRng: a seeded generator whose every draw is defined here, so a seed gives the same
// shuffles, crops, flips and noise with libstdc++, libc++ and MSVC. The std:: distributions
// (uniform_int_distribution, the engine std::shuffle takes) are implementation-defined, and
// attnlens::Rng uses them; data order and augmentation use this generator instead.
#pragma once

#include <cmath>
#include <cstdint>

#include "attnlens/core/errors.hpp"

namespace attnlens {

namespace detail {

// SplitMix64's output function: a bijection of 64-bit words whose outputs for consecutive
// inputs pass BigCrush (Steele, Lea and Flood, OOPSLA 2014). PortableRng's mixer, and the
// counter-based draws of dropout (layers/dropout.hpp).
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

constexpr std::uint64_t k_golden_gamma = 0x9e3779b97f4a7c15u;  // SplitMix64's increment

}  // namespace detail

// SplitMix64 (Steele, Lea and Flood 2014, the seeding generator of xoshiro): a 64-bit state
// advanced by a Weyl constant and finalized by a bijective mixer. Its whole state is one
// integer, so a run can save and restore it exactly. A (seed, stream) pair names a sequence:
// the shuffle of epoch e is stream e of the run's seed, with nothing carried between epochs.
class PortableRng {
 public:
  explicit PortableRng(std::uint64_t seed = 0, std::uint64_t stream = 0)
      : state_(mix(seed ^ mix(stream + k_golden))) {}

  // Uniform on [0, 2^64).
  std::uint64_t next() {
    state_ += k_golden;
    return mix(state_);
  }

  // Uniform on [0, bound), bound >= 1, without bias: draws below 2^64 mod bound are rejected
  // (at most one in two for any bound, almost never for small ones). One draw for bound 1.
  std::uint64_t below(std::uint64_t bound) {
    if (bound == 0) throw ArgumentError("PortableRng::below bound: expected >= 1, got 0");
    const std::uint64_t threshold = (std::uint64_t{0} - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

  // Uniform on [0, 1) with 53 random bits: k / 2^53.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Standard normal, by Box-Muller from two draws: sqrt(-2 log(1 - u1)) cos(2 pi u2). Only the
  // cosine half is used, so that the state stays one integer; 1 - u1 is in (0, 1], so the log is
  // finite. The same on every platform up to the last bits of its log and cos.
  double normal() {
    const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));
    const double angle = 2.0 * 3.14159265358979323846 * uniform();
    return radius * std::cos(angle);
  }

  // True with probability p (p <= 0 never, p >= 1 always); one draw either way.
  bool bernoulli(double p) { return uniform() < p; }

  // The whole state: PortableRng::from_state(rng.state()) continues rng's sequence.
  std::uint64_t state() const { return state_; }
  static PortableRng from_state(std::uint64_t state) {
    PortableRng rng;
    rng.state_ = state;
    return rng;
  }

  friend bool operator==(const PortableRng& a, const PortableRng& b) {
    return a.state_ == b.state_;
  }
  friend bool operator!=(const PortableRng& a, const PortableRng& b) { return !(a == b); }

 private:
  static constexpr std::uint64_t k_golden = detail::k_golden_gamma;

  static constexpr std::uint64_t mix(std::uint64_t z) { return detail::mix64(z); }

  std::uint64_t state_ = 0;
};

}  // namespace attnlens
