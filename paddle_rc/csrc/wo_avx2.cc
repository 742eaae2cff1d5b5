// AVX2 + FMA build of the kernels (8 floats per vector, 16 registers).
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "wo_simd_impl.h"

namespace rc_wo {
namespace {
struct Avx2 {
  static constexpr int W = 8;
  static constexpr int NREG = 16;
  using reg = __m256;
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg set1(float v) { return _mm256_set1_ps(v); }
  static inline reg loadf(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static inline reg load_q8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline void load_q4(const int8_t* p, reg* lo, reg* hi) {
    const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    *lo = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(b, 28), 28));
    *hi = _mm256_cvtepi32_ps(_mm256_srai_epi32(b, 4));
  }
};
}  // namespace

void stream_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  stream_impl<Avx2>(p, m0, m1, n0, n1);
}
void dequant_avx2(const Problem& p, int64_t k0, int64_t k1, int64_t n0, int64_t n1, float* out,
                  int64_t ld) {
  dequant_impl<Avx2>(p, k0, k1, n0, n1, out, ld);
}
}  // namespace rc_wo
