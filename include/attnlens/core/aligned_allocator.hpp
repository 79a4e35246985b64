// AlignedAllocator<T>: std::allocator with 64-byte aligned blocks, for the storage that Eigen maps
// (Tensor, per-thread scratch). Eigen's reductions over a map start with the elements before its
// first aligned address, so the order of a sum, and with it the rounding, depends on the
// address modulo the packet size: with every block at a 64-byte boundary (an AVX-512 register,
// a cache line) the same computation rounds the same way in every process (docs/training.md,
// "Resuming").
#pragma once

#include <cstddef>
#include <limits>
#include <new>
#include <vector>

namespace attnlens {

inline constexpr std::size_t k_storage_alignment = 64;

template <class T>
struct AlignedAllocator {
  static_assert(alignof(T) <= k_storage_alignment, "AlignedAllocator: T needs a stricter alignment");
  using value_type = T;

  AlignedAllocator() noexcept = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}  // NOLINT: rebinding, as std::allocator

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(k_storage_alignment)));
  }
  void deallocate(T* p, std::size_t) noexcept {
    ::operator delete(p, std::align_val_t(k_storage_alignment));
  }

  template <class U>
  friend bool operator==(const AlignedAllocator&, const AlignedAllocator<U>&) noexcept {
    return true;
  }
  template <class U>
  friend bool operator!=(const AlignedAllocator&, const AlignedAllocator<U>&) noexcept {
    return false;
  }
};

// Contiguous storage at a 64-byte boundary: what Tensor holds.
template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace attnlens
