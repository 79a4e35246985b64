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

}  // namespace attnlens
