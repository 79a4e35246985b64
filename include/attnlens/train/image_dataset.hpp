// A labelled image set in memory, what training and evaluation read: the images as the model
// takes them (normalized) and one class per image.
#pragma once

#include <string>
#include <vector>

#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

template <class T>
struct ImageDataset {
  Tensor<T> images;                      // N x C x H x W
  std::vector<Index> labels;             // N, each in [0, class_names.size())
  std::vector<std::string> class_names;  // by label
  Index size() const { return static_cast<Index>(labels.size()); }
};

// The first `count` examples of a data set (all of them for count 0 or count >= its size):
// quick runs and tests on a slice.
template <class T>
ImageDataset<T> first_examples(ImageDataset<T> data, Index count) {
  if (count <= 0 || count >= data.size()) return data;
  detail::require_shape(data.images.rank() >= 1 && data.images.dim(0) == data.size(),
                        "first_examples images",
                        detail::concat("one image per label (", data.size(), " x ...)"),
                        detail::shape_string(data.images.shape()));
  Shape shape = data.images.shape();
  const Index per_example = data.images.size() / shape[0];
  shape[0] = count;
  data.images = Tensor<T>(shape, typename Tensor<T>::Storage(
                                     data.images.data(), data.images.data() + count * per_example));
  data.labels.resize(static_cast<std::size_t>(count));
  return data;
}

}  // namespace attnlens
