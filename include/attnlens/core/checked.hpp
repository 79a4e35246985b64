// Checked arithmetic on sizes that come from files and options (docs/limits.md): a sum or
// product of non-negative sizes that does not fit in Index throws, naming what it sizes,
// instead of wrapping around into a small allocation or an out-of-bounds index.
#pragma once

#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::detail {

inline constexpr Index k_max_index = std::numeric_limits<Index>::max();

// a + b for sizes a, b >= 0; throws Error "<what>: ... overflows" when it exceeds Index.
template <class Error = ArgumentError>
Index checked_add(Index a, Index b, const std::string& what) {
  if (a < 0 || b < 0)
    throw Error(concat(what, ": expected non-negative sizes, got ", a, " and ", b));
  if (a > k_max_index - b)
    throw Error(
        concat(what, ": ", a, " + ", b, " overflows the index type (max ", k_max_index, ")"));
  return a + b;
}

// a * b for sizes a, b >= 0; throws Error "<what>: ... overflows" when it exceeds Index.
template <class Error = ArgumentError>
Index checked_mul(Index a, Index b, const std::string& what) {
  if (a < 0 || b < 0)
    throw Error(concat(what, ": expected non-negative sizes, got ", a, " and ", b));
  if (a != 0 && b > k_max_index / a)
    throw Error(
        concat(what, ": ", a, " x ", b, " overflows the index type (max ", k_max_index, ")"));
  return a * b;
}

// The product of sizes >= 0, checked like checked_mul.
template <class Error = ArgumentError, class Sizes>
Index checked_product_of(const Sizes& sizes, const std::string& what) {
  Index product = 1;
  for (Index size : sizes) product = checked_mul<Error>(product, size, what);
  return product;
}
template <class Error = ArgumentError>
Index checked_product(std::initializer_list<Index> sizes, const std::string& what) {
  return checked_product_of<Error>(sizes, what);
}
template <class Error = ArgumentError>
Index checked_product(const std::vector<Index>& sizes, const std::string& what) {
  return checked_product_of<Error>(sizes, what);
}

// 2 r + 1, the side of a window or patch of radius r >= 0.
template <class Error = ArgumentError>
Index checked_side(Index radius, const std::string& what) {
  return checked_add<Error>(checked_mul<Error>(2, radius, what), 1, what);
}

}  // namespace attnlens::detail
