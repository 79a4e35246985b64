// Convolution as multi-head self-attention (Cordonnier et al., Theorem 1; docs/math.md section 4):
// from a K x K conv2d (PyTorch layout D_out x D_in x K x K, bias D_out) build a
// MultiHeadAttention with K^2 positional-only heads and the quadratic encoding, whose output
// tends to the zero-padded convolution as alpha grows (error ~ 20 e^-alpha). conv2d_same is
// the direct convolution it is measured against.
#pragma once

#include <algorithm>
#include <memory>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/quadratic.hpp"

namespace attnlens {

namespace detail {

// Checks a conv2d weight D_out x D_in x K x K (K odd), its bias [D_out] and, when given, an
// image D_in x H x W.
template <class T>
void check_conv(const Tensor<T>& weight, const Tensor<T>& bias, const Tensor<T>* image) {
  const Shape& w = weight.shape();
  require_shape(w.size() == 4 && w[0] > 0 && w[1] > 0 && w[2] > 0 && w[2] == w[3] && w[2] % 2 == 1,
                "conv weight", "[D_out, D_in, K, K] with K odd", shape_string(w));
  require_shape(bias.shape() == Shape{w[0]}, "conv bias", shape_string(Shape{w[0]}),
                shape_string(bias.shape()));
  if (image)
    require_shape(
        image->rank() == 3 && image->dim(0) == w[1] && image->dim(1) > 0 && image->dim(2) > 0,
        "conv input", concat("[", w[1], ", H, W]"), shape_string(image->shape()));
}

}  // namespace detail

// torch.nn.functional.conv2d(image, weight, bias, padding=K/2) for one image D_in x H x W.
template <class T>
Tensor<T> conv2d_same(const Tensor<T>& weight, const Tensor<T>& bias, const Tensor<T>& image) {
  detail::check_conv(weight, bias, &image);
  const Index out = weight.dim(0), in = weight.dim(1), K = weight.dim(2), pad = K / 2;
  const Index H = image.dim(1), W = image.dim(2);
  Tensor<T> result({out, H, W});
  for (Index o = 0; o < out; ++o)
    for (Index r = 0; r < H; ++r)
      for (Index c = 0; c < W; ++c) {
        T sum = bias.data()[o];
        for (Index i = 0; i < in; ++i)
          for (Index kr = 0; kr < K; ++kr)
            for (Index kc = 0; kc < K; ++kc) {
              const Index rr = r + kr - pad, cc = c + kc - pad;
              if (rr >= 0 && rr < H && cc >= 0 && cc < W)
                sum += weight.at({o, i, kr, kc}) * image.at({i, rr, cc});
            }
        result.at({o, r, c}) = sum;
      }
  return result;
}

struct ConvAsAttentionOptions {
  Index height = 0;  // the image size the layer is built for
  Index width = 0;
  double alpha = 16.0;  // the heads' width: larger is closer to the convolution
};

// The heads use min(alpha, k_saturated_alpha): there every key but the centre shift's weighs
// e^-1e4 (0 in float and double) times the centre's, so the layer already is the convolution,
// and a larger alpha would only overflow alpha |Delta|^2 (alpha = 1e40 is inf in float).
inline constexpr double k_saturated_alpha = 1e4;

template <class T>
class ConvAsAttention {
 public:
  // Head h = kr * K + kc attends to the shift Delta_h = (kr - K/2, kc - K/2); its values are
  // the input channels (W_val^(h) = I, head width D_h = max(D_in, ceil(D_out / K^2))) and its
  // block of out_proj.weight holds W_conv[:, :, kr, kc]. Keys run over the image and its
  // zero border of K/2 pixels.
  ConvAsAttention(const Tensor<T>& weight, const Tensor<T>& bias,
                  const ConvAsAttentionOptions& options)
      : attention(attention_options(weight, bias, options)),
        position(std::make_shared<QuadraticEncoding<T>>(position_options(weight, options))),
        out_channels_(weight.dim(0)),
        in_channels_(weight.dim(1)),
        options_(options) {
    detail::require_argument(options.alpha > 0.0, "ConvAsAttentionOptions::alpha", "> 0",
                             options.alpha);
    const Index K = weight.dim(2), pad = K / 2, E = attention.embed_dim();
    const Index head_dim = attention.head_dim();
    Matrix<T> value_weight = Matrix<T>::Zero(E, in_channels_);
    for (Index kr = 0; kr < K; ++kr)
      for (Index kc = 0; kc < K; ++kc) {
        const Index head = kr * K + kc;
        value_weight.block(head * head_dim, 0, in_channels_, in_channels_).setIdentity();
        position->alpha[head] = static_cast<T>(std::min(options.alpha, k_saturated_alpha));
        position->center_shift.row(head) << static_cast<T>(kr - pad), static_cast<T>(kc - pad);
        for (Index o = 0; o < out_channels_; ++o)
          for (Index i = 0; i < in_channels_; ++i)
            attention.out_proj.weight(o, head * head_dim + i) = weight.at({o, i, kr, kc});
      }
    if (attention.packed())
      attention.in_proj_weight.bottomRows(E) = value_weight;
    else
      attention.v_proj_weight = value_weight;
    attention.out_proj.bias.head(out_channels_) =
        Eigen::Map<const Vector<T>>(bias.data(), out_channels_);
    attention.score_terms.push_back(position);
  }

  // image D_in x H x W -> D_out x H x W.
  Tensor<T> forward(const Tensor<T>& image) const {
    detail::require_shape(
        image.shape() == Shape{in_channels_, options_.height, options_.width}, "conv input",
        detail::shape_string(Shape{in_channels_, options_.height, options_.width}),
        detail::shape_string(image.shape()));
    const Grid2d& keys = position->key_grid();
    const Index H = options_.height, W = options_.width, pad = -keys.first_row;
    // Tokens: the queries carry no content (positional-only heads), keys and values are the
    // pixels of the zero-padded image, one token per pixel.
    const Tensor<T> queries({H * W, attention.embed_dim()});
    Tensor<T> pixels({keys.tokens(), in_channels_});
    for (Index i = 0; i < in_channels_; ++i)
      for (Index r = 0; r < H; ++r)
        for (Index c = 0; c < W; ++c)
          pixels.at({(r + pad) * keys.width + c + pad, i}) = image.at({i, r, c});
    const Tensor<T> tokens = attention.forward(queries, pixels, pixels).output;
    Tensor<T> result({out_channels_, H, W});
    MatrixMap<T>(result.data(), out_channels_, H * W) =
        tokens.matrix().leftCols(out_channels_).transpose();
    return result;
  }

  MultiHeadAttention<T> attention;                 // K^2 heads, content off
  std::shared_ptr<QuadraticEncoding<T>> position;  // also in attention.score_terms

 private:
  static MultiHeadAttentionOptions attention_options(const Tensor<T>& weight, const Tensor<T>& bias,
                                                     const ConvAsAttentionOptions& options) {
    detail::check_conv<T>(weight, bias, nullptr);
    detail::require_argument(options.height > 0 && options.width > 0,
                             "ConvAsAttentionOptions height x width", ">= 1 x 1",
                             detail::concat(options.height, " x ", options.width));
    const Index heads = weight.dim(2) * weight.dim(2), in = weight.dim(1);
    const Index head_dim = std::max(in, (weight.dim(0) + heads - 1) / heads);
    MultiHeadAttentionOptions mha{heads * head_dim, heads, true, in, in};
    mha.content = false;
    return mha;
  }

  static QuadraticEncodingOptions position_options(const Tensor<T>& weight,
                                                   const ConvAsAttentionOptions& options) {
    const Index K = weight.dim(2), pad = K / 2;
    const Grid2d pixels{options.height, options.width};
    const Grid2d padded{options.height + 2 * pad, options.width + 2 * pad, 0, -pad, -pad};
    return {K * K, pixels, padded};
  }

  Index out_channels_;
  Index in_channels_;
  ConvAsAttentionOptions options_;
};

}  // namespace attnlens
