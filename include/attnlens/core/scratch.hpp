// Per-thread scratch matrices for work done tile by tile (score terms' per-tile tables): each
// slot grows to the largest size a thread has needed and is then reused, so a tile loop
// allocates nothing once its first tiles have run.
#pragma once

#include <cstddef>

#include "attnlens/core/aligned_allocator.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::detail {

// A rows x cols matrix over this thread's buffer `Slot`; its contents are unspecified. Two
// matrices that live at the same time need two slots.
template <class T, int Slot>
MatrixMap<T> scratch_matrix(Index rows, Index cols) {
  thread_local AlignedVector<T> buffer;  // a 64-byte boundary: see aligned_allocator.hpp
  const auto size = static_cast<std::size_t>(rows * cols);
  if (buffer.size() < size) buffer.resize(size);
  return MatrixMap<T>(buffer.data(), rows, cols);
}

}  // namespace attnlens::detail
