// The order a training run visits its examples in: seeded permutations (Fisher-Yates on
// PortableRng, the same on every platform), the batches of an epoch, and gathering a batch's
// examples along the first axis. Epoch e's order depends on the seed and e alone, so a run
// resumed at epoch e needs no generator state to see the order an uninterrupted run sees.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// A uniformly random permutation of 0..n-1, n >= 0: Durstenfeld's Fisher-Yates, for i from n-1
// down to 1 swapping entry i with entry rng.below(i + 1), n - 1 draws in all.
inline std::vector<Index> random_permutation(Index n, PortableRng& rng) {
  detail::require_argument(n >= 0, "random_permutation n", ">= 0", n);
  std::vector<Index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), Index{0});
  for (Index i = n - 1; i > 0; --i) {
    const auto j = static_cast<Index>(rng.below(static_cast<std::uint64_t>(i) + 1));
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

struct DataOrderOptions {
  Index batch_size = 128;
  bool shuffle = true;     // false: every epoch visits 0, 1, ..., n-1
  bool drop_last = false;  // leave out an epoch's last batch when it is smaller than batch_size
  std::uint64_t seed = 0;
};

// The epochs of a data set of `examples` examples: epoch e's order is
// random_permutation(examples, PortableRng(seed, e)), cut into batches of batch_size in that
// order (the last one smaller unless drop_last). An augmentation generator should use another
// seed, or its draws repeat the shuffle's.
class DataOrder {
 public:
  DataOrder(Index examples, const DataOrderOptions& options)
      : examples_(examples), options_(options) {
    detail::require_argument(examples >= 0, "DataOrder examples", ">= 0", examples);
    detail::require_argument(options.batch_size >= 1, "DataOrderOptions::batch_size", ">= 1",
                             options.batch_size);
  }

  Index examples() const { return examples_; }
  Index batch_size() const { return options_.batch_size; }
  const DataOrderOptions& options() const { return options_; }

  // Batches per epoch: ceil(examples / batch_size), or floor with drop_last.
  Index batches() const {
    const Index full = examples_ / options_.batch_size;
    return options_.drop_last || examples_ % options_.batch_size == 0 ? full : full + 1;
  }

  // The examples per epoch that batches() visit: all of them, or without drop_last's remainder.
  Index examples_per_epoch() const { return std::min(examples_, batches() * options_.batch_size); }

  // Every example once, in epoch `epoch`'s order.
  std::vector<Index> epoch_order(std::uint64_t epoch) const {
    if (!options_.shuffle) {
      std::vector<Index> order(static_cast<std::size_t>(examples_));
      std::iota(order.begin(), order.end(), Index{0});
      return order;
    }
    PortableRng rng(options_.seed, epoch);
    return random_permutation(examples_, rng);
  }

  // The examples of batch b (0 <= b < batches()) of `order` (an epoch_order), in order.
  std::vector<Index> batch(const std::vector<Index>& order, Index b) const {
    detail::require_shape(static_cast<Index>(order.size()) == examples_, "DataOrder::batch order",
                          detail::concat(examples_, " entries (an epoch_order)"),
                          detail::concat(order.size(), " entries"));
    detail::require_argument(b >= 0 && b < batches(), "DataOrder::batch b",
                             detail::concat("a batch in [0, ", batches(), ")"), b);
    const Index begin = b * options_.batch_size;
    const Index end = std::min(examples_, begin + options_.batch_size);
    return {order.begin() + begin, order.begin() + end};
  }

 private:
  Index examples_;
  DataOrderOptions options_;
};

// The entries `indices` of `data` along its first axis (rank >= 1), in that order: a batch
// B x C x H x W of the images N x C x H x W. Indices may repeat; each must be in [0, N).
template <class T>
Tensor<T> gather_first_axis(const Tensor<T>& data, const std::vector<Index>& indices) {
  detail::require_shape(data.rank() >= 1, "gather_first_axis data", "rank >= 1",
                        detail::shape_string(data.shape()));
  const Index n = data.dim(0);
  const Index row = n == 0 ? 0 : data.size() / n;
  Shape shape = data.shape();
  shape[0] = static_cast<Index>(indices.size());
  Tensor<T> out(shape);
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const Index i = indices[k];
    detail::require_argument(i >= 0 && i < n, detail::concat("gather_first_axis indices[", k, "]"),
                             detail::concat("an index in [0, ", n, ")"), i);
    std::copy_n(data.data() + i * row, row, out.data() + static_cast<Index>(k) * row);
  }
  return out;
}

// values[indices[0]], values[indices[1]], ...: a batch's labels.
template <class T>
std::vector<T> gather_first_axis(const std::vector<T>& values, const std::vector<Index>& indices) {
  std::vector<T> out;
  out.reserve(indices.size());
  const auto n = static_cast<Index>(values.size());
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const Index i = indices[k];
    detail::require_argument(i >= 0 && i < n, detail::concat("gather_first_axis indices[", k, "]"),
                             detail::concat("an index in [0, ", n, ")"), i);
    out.push_back(values[static_cast<std::size_t>(i)]);
  }
  return out;
}

}  // namespace attnlens
