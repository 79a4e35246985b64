// Per-thread scratch for work done tile by tile (score terms' per-tile tables and products): each
// slot grows to the largest size a thread has needed and is then reused, so a tile loop
// allocates nothing once its first tiles have run.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>

#include "attnlens/core/aligned_allocator.hpp"
#include "attnlens/core/gemm.hpp"
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

// This thread's SerialGemm in `Slot`, with buffers for products of at least rows x depth times
// depth x cols: made again only when a product outgrows the largest so far.
template <class T, int Slot>
SerialGemm<T>& scratch_gemm(Index rows, Index cols, Index depth) {
  thread_local std::optional<SerialGemm<T>> gemm;
  thread_local Index max_rows = 0, max_cols = 0, max_depth = 0;
  if (!gemm || rows > max_rows || cols > max_cols || depth > max_depth) {
    max_rows = std::max(max_rows, rows);
    max_cols = std::max(max_cols, cols);
    max_depth = std::max(max_depth, depth);
    gemm.emplace(max_rows, max_cols, max_depth);
  }
  return *gemm;
}

}  // namespace attnlens::detail
