// AVX-512 build of the fused kernels. Only called when the CPU reports avx512f (fused_ops.cc).
#pragma GCC target("avx512f,avx512dq,avx2,fma")
#include <immintrin.h>

#include <cmath>

#include "fused_kernels.h"

namespace rc_fused {
namespace {

// exp(x) to ~1 ulp: x = n ln2 + r, |r| <= ln2 / 2, degree-7 Taylor polynomial for e^r, and
// scalef for the 2^n (exact, and it underflows to 0 for the -1e30 of a masked score).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-110.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail(int64_t left) { return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1); }

void softmax(const float* x, float* out, int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = out + r * n;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, xr + i));
    }
    const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + i), vmax));
      sum = _mm512_mask_add_ps(sum, m, sum, e);
      _mm512_mask_storeu_ps(yr + i, m, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      _mm512_mask_storeu_ps(yr + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, yr + i), inv));
    }
  }
}

void rope_row(const float* x, const float* cos, const float* sin, float* out, int64_t d) {
  const int64_t h = d / 2;
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 m = tail(d - i);
    // roll by d/2 on an even d: the partner of column j is j + h (first half) or j - h (second);
    // 16-wide steps never cross h when h is a multiple of 16, else the scalar-index gather path.
    __m512 partner;
    if (h % 16 == 0) {
      partner = _mm512_maskz_loadu_ps(m, x + (i < h ? i + h : i - h));
    } else {
      alignas(64) float tmp[16];
      for (int k = 0; k < 16 && i + k < d; ++k) tmp[k] = x[(i + k + h) % d];
      partner = _mm512_maskz_loadu_ps(m, tmp);
    }
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 y = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, cos + i),
                                     _mm512_mul_ps(partner, _mm512_maskz_loadu_ps(m, sin + i)));
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

// x * sigmoid(a x) = x / (1 + exp(-a x))
inline __m512 x_sigmoid(__m512 x, float a) {
  const __m512 e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(-a)));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

void swiglu(const float* g, const float* u, float* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = tail(i1 - i);
    const __m512 s = x_sigmoid(_mm512_maskz_loadu_ps(m, g + i), 1.0f);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

void quick_gelu(const float* x, float* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = tail(i1 - i);
    _mm512_mask_storeu_ps(out + i, m, x_sigmoid(_mm512_maskz_loadu_ps(m, x + i), 1.702f));
  }
}

}  // namespace

Kernels avx512_kernels() { return {softmax, rope_row, swiglu, quick_gelu, "avx512"}; }

}  // namespace rc_fused
