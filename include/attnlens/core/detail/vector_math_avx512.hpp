// Vectorized float math on AVX-512 (16 lanes), compiled through a target attribute like the
// kernels of gemm_avx512.hpp and used only where detail::use_avx512() holds: exp (Cephes'
// polynomial, about 1 ulp) and erfc (Numerical Recipes' Chebyshev fit, fractional error below
// 1.2e-7 everywhere, so erfc and the tails of GELU keep their relative accuracy).
#pragma once

#include "attnlens/core/detail/gemm_avx512.hpp"
#include "attnlens/core/softmax.hpp"

#if ATTNLENS_HAS_AVX512_KERNELS
namespace attnlens::detail::avx512 {

// exp(x) for x <= 0 (and a little above: the range reduction holds for |x| < 88): the argument
// is clamped at log of the smallest normal number, as in exp_shifted, reduced to [-ln2/2, ln2/2]
// by n = round(x / ln 2) in two steps, Cephes' degree-6 polynomial, and scaled by 2^n with
// vscalefps.
ATTNLENS_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(k_log_min_normal<float>));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// erfc(z) = t exp(-z^2 + P(t)) with t = 1 / (1 + |z| / 2) for z >= 0, and 2 - erfc(-z) below
// (Press et al., Numerical Recipes, 2nd ed., section 6.2, erfcc). Where the exponent falls
// below log of the smallest normal number (|z| > 9.3) the result is about 1e-38 t instead of
// smaller still.
ATTNLENS_AVX512 inline __m512 erfc(__m512 z) {
  const __m512 a = _mm512_abs_ps(z);
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                 _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(0.17087277f);
  for (const float c : {-0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f,
                        0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f})
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
  const __m512 upper = _mm512_mul_ps(t, exp_nonpositive(_mm512_fnmadd_ps(a, a, p)));
  const __mmask16 negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_sub_ps(upper, negative, _mm512_set1_ps(2.0f), upper);
}

}  // namespace attnlens::detail::avx512
#endif
