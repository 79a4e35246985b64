// FrozenMultiHeadAttention<T>: a MultiHeadAttention snapshot for inference with its projection
// weights packed once (docs/performance.md).
#pragma once

#include <type_traits>

#include "attnlens/attention/mask.hpp"
#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/tensor.hpp"

namespace attnlens {

// A MultiHeadAttention for inference with fixed parameters: it keeps its own copy of the
// module with the projection weights packed once for the AVX-512 GEMM kernel (float), where
// MultiHeadAttention::forward packs them on every call (one pass over 4 E^2 floats, about 6%
// of a call at L = 128, E = 512). It is a snapshot, as an ONNX Runtime session is of its
// model: later changes to the original module's parameters do not reach it, so it can never
// use stale packed weights; build a new one after changing them. Elsewhere (double, no
// AVX-512, E not a multiple of 32, separate q/k/v weights) it simply forwards to its copy.
template <class T>
class FrozenMultiHeadAttention {
 public:
  explicit FrozenMultiHeadAttention(const MultiHeadAttention<T>& module,
                                    const ParallelOptions& parallel = {})
      : module_(module) {
    module_.check_parameters();
#if ATTNLENS_HAS_AVX512_KERNELS
    if constexpr (std::is_same_v<T, float>) {
      const Index E = module_.embed_dim();
      if (detail::use_avx512() && module_.packed() && E % detail::avx512::k_nr == 0) {
        packed_.in_proj =
            detail::avx512::pack_transposed(module_.in_proj_weight.data(), E, 3 * E, E, parallel);
        packed_.out_proj =
            detail::avx512::pack_transposed(module_.out_proj.weight.data(), E, E, E, parallel);
      }
    }
#else
    (void)parallel;
#endif
  }

  // Self-attention, as MultiHeadAttention::forward(x, mask, options) of the snapshot.
  MultiHeadOutput<T> forward(const Tensor<T>& x, const AttentionMask<T>& mask = {},
                             const MultiHeadForwardOptions& options = {}) const {
    return module_.forward_impl(x, x, x, mask, options, nullptr, {}, &packed_);
  }

  const MultiHeadAttention<T>& module() const { return module_; }

 private:
  MultiHeadAttention<T> module_;
  typename MultiHeadAttention<T>::PackedWeights packed_;
};

}  // namespace attnlens
