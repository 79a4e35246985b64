// How local a ViT's attention is, per layer and head (Cordonnier et al. 2020's question: do
// heads learn to attend like convolutions?): over patch queries and images, the mean distance
// of the attention mass from its query, the fraction of it within 1 and 2 patches, and the mean
// attention map of one query (docs/interpretability.md, "Heads that learn convolutions").
//
// For query patch i at (r_i, c_i) and key patch j with A_ij its weight (CLS, outside the grid,
// neither a query nor a key here; a row is divided by its patch mass m_i = sum_j A_ij):
//   distance_i = sum_j A_ij |p_j - p_i|_2 / m_i              (Euclidean, in patches)
//   within_k,i = sum_{j: |p_j - p_i|_inf <= k} A_ij / m_i    (Chebyshev: the square that a
//                                                             (2k+1) x (2k+1) conv covers)
// each averaged over the queries (every patch, equally weighted) and the images; a query with no
// weight on patches (all of it on CLS) has no distance and is left out of those means.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/interpret/attention_maps.hpp"

namespace attnlens {

// Sums over the queries seen so far; add() takes the per-head weights of a batch.
class AttentionDistances {
 public:
  AttentionDistances() = default;

  // `query`: the token whose mean map is kept (a patch of the grid, or -1 for none).
  AttentionDistances(const Grid2d& grid, Index layers, Index heads, Index query = -1)
      : grid_(grid), query_(query) {
    grid.check("AttentionDistances grid");
    detail::require_argument(layers > 0 && heads > 0, "AttentionDistances layers x heads",
                             "> 0 each", detail::concat(layers, " x ", heads));
    detail::require_argument(query == -1 || (query >= grid.leading && query < grid.tokens()),
                             "AttentionDistances query",
                             detail::concat("-1 or a patch token in ", grid.leading, "..",
                                            grid.tokens() - 1),
                             query);
    for (Matrix<double>* m : {&distance_, &within1_, &within2_, &counted_, &patch_mass_})
      *m = Matrix<double>::Zero(layers, heads);
    if (query >= 0)
      map_sum_.assign(static_cast<std::size_t>(layers),
                      std::vector<Matrix<double>>(static_cast<std::size_t>(heads),
                                                  Matrix<double>::Zero(grid.height, grid.width)));
  }

  // weights[l]: layer l's B x H x L x L attention (L = grid.tokens()), as a ViT forward with
  // AttentionWeights::per_head returns it. Adds the B images' patch queries.
  template <class T>
  void add(const std::vector<Tensor<T>>& weights) {
    detail::require_argument(static_cast<Index>(weights.size()) == layers(),
                             "AttentionDistances::add weights", detail::concat(layers(), " layers"),
                             weights.size());
    const Index L = grid_.tokens(), N = grid_.height * grid_.width, H = heads();
    Index batch = -1;
    for (std::size_t l = 0; l < weights.size(); ++l) {
      const Tensor<T>& w = weights[l];
      detail::require_shape(w.rank() == 4 && w.dim(1) == H && w.dim(2) == L && w.dim(3) == L &&
                                (batch < 0 || w.dim(0) == batch),
                            detail::concat("attention weights[", l, "]"),
                            detail::concat("[B, ", H, ", ", L, ", ", L, "], B as in layer 0"),
                            detail::shape_string(w.shape()));
      batch = w.dim(0);
    }
    // Distance and Chebyshev radius of every (query, key) offset, once per call.
    Matrix<double> distance(N, N);
    Matrix<int> chebyshev(N, N);
    for (Index i = 0; i < N; ++i)
      for (Index j = 0; j < N; ++j) {
        const Index dr = j / grid_.width - i / grid_.width, dc = j % grid_.width - i % grid_.width;
        distance(i, j) = std::sqrt(static_cast<double>(dr * dr + dc * dc));
        chebyshev(i, j) = static_cast<int>(std::max(std::abs(dr), std::abs(dc)));
      }
    for (Index l = 0; l < layers(); ++l)
      for (Index b = 0; b < batch; ++b)
        for (Index h = 0; h < H; ++h) {
          const auto a = weights[static_cast<std::size_t>(l)].matrix({b, h});
          for (Index i = 0; i < N; ++i) {
            const auto row = a.row(grid_.leading + i).segment(grid_.leading, N);
            double mass = 0, far = 0, near1 = 0, near2 = 0;
            for (Index j = 0; j < N; ++j) {
              const double v = static_cast<double>(row[j]);
              mass += v;
              far += v * distance(i, j);
              if (chebyshev(i, j) <= 1) near1 += v;
              if (chebyshev(i, j) <= 2) near2 += v;
            }
            patch_mass_(l, h) += mass;
            if (!(mass > 0)) continue;  // no patch weight (all on CLS): no distance to count
            distance_(l, h) += far / mass;
            within1_(l, h) += near1 / mass;
            within2_(l, h) += near2 / mass;
            counted_(l, h) += 1;
          }
          if (query_ >= 0)
            map_sum_[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)] +=
                grid_attention_row(a, query_, grid_).template cast<double>();
        }
    images_ += batch;
    queries_ += batch * N;
  }

  Index layers() const { return distance_.rows(); }
  Index heads() const { return distance_.cols(); }
  Index images() const { return images_; }
  Index queries() const { return queries_; }  // patch queries seen: images x patches
  const Grid2d& grid() const { return grid_; }

  // layers x heads means over the queries seen (NaN before any): the distance in patches, the
  // fractions within Chebyshev radius 1 and 2, and the mass on patches (1 without CLS).
  Matrix<double> mean_distance() const { return distance_.cwiseQuotient(counted_); }
  Matrix<double> within_1() const { return within1_.cwiseQuotient(counted_); }
  Matrix<double> within_2() const { return within2_.cwiseQuotient(counted_); }
  Matrix<double> patch_mass() const { return patch_mass_ / static_cast<double>(queries_); }

  // The kept query's attention over the grid averaged over the images: [l][h], grid-shaped.
  std::vector<std::vector<Matrix<double>>> mean_query_maps() const {
    detail::require_argument(query_ >= 0, "AttentionDistances::mean_query_maps",
                             "a query given to the constructor", "none");
    auto out = map_sum_;
    for (auto& layer : out)
      for (auto& map : layer) map /= static_cast<double>(images_);
    return out;
  }

 private:
  Grid2d grid_;
  Index query_ = -1;
  // Sums over the queries with patch weight (counted_ of them per layer and head).
  Matrix<double> distance_, within1_, within2_, counted_, patch_mass_;
  std::vector<std::vector<Matrix<double>>> map_sum_;
  Index images_ = 0, queries_ = 0;
};

// The statistics of `vit` on `images` (B x C x H x W, as the model takes them), run in batches of
// `batch_size`; `query` as for AttentionDistances (a token of vit_patch_grid, or -1).
template <class T>
AttentionDistances vit_attention_distances(const VisionTransformer<T>& vit,
                                           const Tensor<T>& images, Index query = -1,
                                           Index batch_size = 100,
                                           const ParallelOptions& parallel = {}) {
  detail::require_argument(batch_size > 0, "vit_attention_distances batch_size", "> 0",
                           batch_size);
  detail::require_shape(images.rank() == 4 && images.dim(0) > 0, "images",
                        "[B, C, H, W] with B >= 1", detail::shape_string(images.shape()));
  const VisionTransformerOptions& o = vit.options();
  AttentionDistances out(vit_patch_grid(o), o.encoder.num_layers, o.encoder.layer.nhead, query);
  EncoderForwardOptions forward;
  forward.weights = AttentionWeights::per_head;
  forward.parallel = parallel;
  const Index B = images.dim(0), per_image = images.size() / B;
  for (Index start = 0; start < B; start += batch_size) {
    const Index count = std::min(batch_size, B - start);
    Tensor<T> batch({count, images.dim(1), images.dim(2), images.dim(3)});
    std::copy_n(images.data() + start * per_image, count * per_image, batch.data());
    out.add(vit.forward(batch, forward).weights);
  }
  return out;
}

}  // namespace attnlens
