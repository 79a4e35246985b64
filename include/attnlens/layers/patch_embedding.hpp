// PatchEmbedding<T>: a vision transformer's patch embedding, nn.Conv2d(in_chans, embed_dim,
// kernel_size = stride = patch_size) as in timm's PatchEmbed (parameter proj.weight
// [E, C, P, P], proj.bias [E]), computed as one GEMM: non-overlapping patches are rows.
#pragma once

#include <string>

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
  Tensor<T> forward(const Tensor<T>& images) const {
    const Index P = patch_size_, C = in_chans_;
    const bool ok = images.rank() == 4 && images.dim(1) == C && images.dim(2) > 0 &&
                    images.dim(3) > 0 && images.dim(2) % P == 0 && images.dim(3) % P == 0 &&
                    images.dim(0) > 0;
    detail::require_shape(ok, "images",
                          detail::concat("[B, ", C, ", H, W] with H and W multiples of ", P),
                          detail::shape_string(images.shape()));
    const Index B = images.dim(0), H = images.dim(2), W = images.dim(3);
    const Index rows = H / P, cols = W / P, N = rows * cols;
    // Patch n's row holds its pixels in the conv weight's (c, ky, kx) order.
    Matrix<T> patches(B * N, C * P * P);
    for (Index b = 0; b < B; ++b)
      for (Index c = 0; c < C; ++c) {
        const ConstMatrixMap<T> plane(images.data() + (b * C + c) * H * W, H, W);
        for (Index r = 0; r < rows; ++r)
          for (Index q = 0; q < cols; ++q)
            for (Index ky = 0; ky < P; ++ky)
              patches.row(b * N + r * cols + q).segment((c * P + ky) * P, P) =
                  plane.row(r * P + ky).segment(q * P, P);
      }
    Tensor<T> out({B, N, embed_dim()});
    proj.forward(patches, MatrixMap<T>(out.data(), B * N, embed_dim()));
    return out;
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
