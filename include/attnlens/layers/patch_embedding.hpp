// PatchEmbedding<T>: a vision transformer's patch embedding, nn.Conv2d(in_chans, embed_dim,
// kernel_size = stride = patch_size) as in timm's PatchEmbed (parameter proj.weight
// [E, C, P, P], proj.bias [E]), computed as one GEMM: non-overlapping patches are rows; and its
// backward pass, to the parameters and the images (docs/math.md sections 6 and 7.5).
#pragma once

#include <string>
#include <type_traits>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/layers/linear.hpp"

namespace attnlens {

struct PatchEmbeddingOptions {
  Index in_chans = 3;
  Index embed_dim = 0;
  Index patch_size = 16;
  bool bias = true;
};

template <class T>
class PatchEmbedding {
 public:
  PatchEmbedding() = default;

  // Zero parameters of the right shapes: load them or call reset_parameters().
  explicit PatchEmbedding(const PatchEmbeddingOptions& options)
      : proj(checked(options)), in_chans_(options.in_chans), patch_size_(options.patch_size) {}

  // nn.Conv2d's default initialisation (that of nn.Linear with fan_in = C * P * P).
  void reset_parameters(Rng& rng) { proj.reset_parameters(rng); }

  Index in_chans() const { return in_chans_; }
  Index patch_size() const { return patch_size_; }
  Index embed_dim() const { return proj.out_features(); }

  // images: B x C x H x W (NCHW, as PyTorch), H and W multiples of patch_size. Returns
  // B x N x E with N = (H/P) (W/P) patches in row-major order, timm's flatten(2).transpose(1, 2).
  // The product runs on `parallel`'s threads.
  Tensor<T> forward(const Tensor<T>& images, const ParallelOptions& parallel = {}) const {
    const Matrix<T> patches = patch_matrix(images);
    Tensor<T> out({images.dim(0), patches.rows() / images.dim(0), embed_dim()});
    proj.forward(patches, MatrixMap<T>(out.data(), patches.rows(), embed_dim()), parallel);
    return out;
  }

  // The backward pass of forward(images) given dy = dL/d(output) (B x N x E): returns dL/dimages
  // (B x C x H x W; what an attack on the input follows) and accumulates proj's gradients into
  // gradient.proj. The patch matrix is formed again from the images rather than cached.
  Tensor<T> backward(const Tensor<T>& images, const Tensor<T>& dy, PatchEmbedding<T>& gradient,
                     const ParallelOptions& parallel = {}) const {
    const Matrix<T> patches = patch_matrix(images);
    const Shape expected{images.dim(0), patches.rows() / images.dim(0), embed_dim()};
    detail::require_shape(dy.shape() == expected, "PatchEmbedding backward dy",
                          detail::shape_string(expected), detail::shape_string(dy.shape()));
    const Matrix<T> dpatches = proj.backward(
        patches, ConstMatrixMap<T>(dy.data(), patches.rows(), embed_dim()), gradient.proj,
        parallel);
    // Patches do not overlap: each pixel's gradient is its one entry of dpatches.
    Tensor<T> dimages(images.shape());
    for_each_patch_run(dimages.data(), images.shape(), dpatches,
                       [](auto pixels, auto patch) { pixels = patch; });
    return dimages;
  }

  Linear<T> proj;  // weight: E x (C * P * P), the Conv2d weight [E, C, P, P] row-major

 private:
  static LinearOptions checked(const PatchEmbeddingOptions& o) {
    detail::require_argument(o.in_chans > 0, "PatchEmbeddingOptions::in_chans", "> 0", o.in_chans);
    detail::require_argument(o.embed_dim > 0, "PatchEmbeddingOptions::embed_dim", "> 0",
                             o.embed_dim);
    detail::require_argument(o.patch_size > 0, "PatchEmbeddingOptions::patch_size", "> 0",
                             o.patch_size);
    return {o.in_chans * o.patch_size * o.patch_size, o.embed_dim, o.bias};
  }

  // B x N rows, one per patch, each holding its pixels in the conv weight's (c, ky, kx) order.
  Matrix<T> patch_matrix(const Tensor<T>& images) const {
    const Index P = patch_size_, C = in_chans_;
    const bool ok = images.rank() == 4 && images.dim(1) == C && images.dim(2) > 0 &&
                    images.dim(3) > 0 && images.dim(2) % P == 0 && images.dim(3) % P == 0 &&
                    images.dim(0) > 0;
    detail::require_shape(ok, "images",
                          detail::concat("[B, ", C, ", H, W] with H and W multiples of ", P),
                          detail::shape_string(images.shape()));
    Matrix<T> patches(images.dim(0) * (images.dim(2) / P) * (images.dim(3) / P), C * P * P);
    for_each_patch_run(images.data(), images.shape(), patches,
                       [](auto pixels, auto patch) { patch = pixels; });
    return patches;
  }

  // Calls f(pixels, patch) for every run of P pixels of a patch: `pixels` a segment of an image
  // row in `images` (B x C x H x W, checked), `patch` the segment of that patch's row of
  // `patches` where the run belongs. The one loop of im2col (forward) and its inverse (backward).
  template <class Pixel, class Patches, class F>
  void for_each_patch_run(Pixel* images, const Shape& shape, Patches& patches, F&& f) const {
    using Plane =
        Eigen::Map<std::conditional_t<std::is_const_v<Pixel>, const Matrix<T>, Matrix<T>>>;
    const Index P = patch_size_, C = in_chans_;
    const Index H = shape[2], W = shape[3], rows = H / P, cols = W / P, N = rows * cols;
    for (Index b = 0; b < shape[0]; ++b)
      for (Index c = 0; c < C; ++c) {
        Plane plane(images + (b * C + c) * H * W, H, W);
        for (Index r = 0; r < rows; ++r)
          for (Index q = 0; q < cols; ++q)
            for (Index ky = 0; ky < P; ++ky)
              f(plane.row(r * P + ky).segment(q * P, P),
                patches.row(b * N + r * cols + q).segment((c * P + ky) * P, P));
      }
  }

  Index in_chans_ = 3;
  Index patch_size_ = 16;
};

// proj.weight is visited with its stored 4-D shape [E, C, P, P] as a third argument.
template <class T, class F>
void for_each_parameter(PatchEmbedding<T>& embedding, const std::string& prefix, F&& f) {
  const Index P = embedding.patch_size();
  f(prefix + "proj.weight", embedding.proj.weight,
    Shape{embedding.embed_dim(), embedding.in_chans(), P, P});
  if (embedding.proj.has_bias()) f(prefix + "proj.bias", embedding.proj.bias);
}

}  // namespace attnlens
