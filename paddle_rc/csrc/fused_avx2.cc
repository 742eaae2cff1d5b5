// AVX2 + FMA build of the fused kernels, for x86-64 CPUs without AVX-512 (AMD Zen 2/3, older Intel).
// Only called when the CPU reports avx2 and fma (fused_ops.cc). Same arithmetic as fused_avx512.cc on
// 8 floats; no masked loads, so each loop ends with a scalar tail.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <cmath>

#include "fused_kernels.h"

namespace rc_fused {
namespace {

// exp(x): x = n ln2 + r, degree-7 polynomial for e^r, 2^n built in the exponent bits. Below -87.3 the
// result is 0 exactly (the -1e30 of a masked score); above 88.3 it is clamped (e^88.3 ~ 2.2e38).
inline __m256 exp8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// one float through the vector exp, so a row's tail rounds like its body
inline float exp1(float x) { return _mm256_cvtss_f32(exp8(_mm256_set1_ps(x))); }

void softmax(const float* x, float* out, int64_t r0, int64_t r1, int64_t n) {
  const int64_t body = n & ~int64_t(7);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = out + r * n;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int64_t i = 0; i < body; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(xr + i));
    float m = hmax(mx);
    for (int64_t i = body; i < n; ++i) m = std::fmax(m, xr[i]);
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < body; i += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(xr + i), vmax));
      sum = _mm256_add_ps(sum, e);
      _mm256_storeu_ps(yr + i, e);
    }
    float s = hsum(sum);
    for (int64_t i = body; i < n; ++i) s += (yr[i] = exp1(xr[i] - m));
    const float inv = 1.0f / s;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t i = 0; i < body; i += 8) _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_loadu_ps(yr + i), vinv));
    for (int64_t i = body; i < n; ++i) yr[i] *= inv;
  }
}

void rope_row(const float* x, const float* cos, const float* sin, float* out, int64_t d) {
  const int64_t h = d / 2;
  // 8-wide steps never cross the half when h is a multiple of 8 (every LLaMA head dim); else scalar
  const int64_t body = (h % 8 == 0) ? d : 0;
  for (int64_t i = 0; i < body; i += 8) {
    const __m256 partner = _mm256_loadu_ps(x + (i < h ? i + h : i - h));
    const __m256 y = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(cos + i),
                                     _mm256_mul_ps(partner, _mm256_loadu_ps(sin + i)));
    _mm256_storeu_ps(out + i, y);
  }
  for (int64_t i = body; i < d; ++i) out[i] = std::fma(x[i], cos[i], x[(i + h) % d] * sin[i]);
}

// x * sigmoid(a x) = x / (1 + exp(-a x))
inline __m256 x_sigmoid(__m256 x, float a) {
  const __m256 e = exp8(_mm256_mul_ps(x, _mm256_set1_ps(-a)));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

inline float x_sigmoid1(float x, float a) { return _mm256_cvtss_f32(x_sigmoid(_mm256_set1_ps(x), a)); }

void swiglu(const float* g, const float* u, float* out, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(x_sigmoid(_mm256_loadu_ps(g + i), 1.0f), _mm256_loadu_ps(u + i)));
  for (; i < i1; ++i) out[i] = x_sigmoid1(g[i], 1.0f) * u[i];
}

void quick_gelu(const float* x, float* out, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) _mm256_storeu_ps(out + i, x_sigmoid(_mm256_loadu_ps(x + i), 1.702f));
  for (; i < i1; ++i) out[i] = x_sigmoid1(x[i], 1.702f);
}

}  // namespace

Kernels avx2_kernels() { return {softmax, rope_row, swiglu, quick_gelu, "avx2"}; }

}  // namespace rc_fused
