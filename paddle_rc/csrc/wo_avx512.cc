// AVX-512 build of the kernels (16 floats per vector, 32 registers). Only called when the CPU
// reports avx512f and avx512bw (checked in weight_only_matmul.cc).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "wo_simd_impl.h"

namespace rc_wo {
namespace {
struct Avx512 {
  static constexpr int W = 16;
  static constexpr int NREG = 32;
  using reg = __m512;
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg set1(float v) { return _mm512_set1_ps(v); }
  static inline reg loadf(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static inline reg load_q8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static inline void load_q4(const int8_t* p, reg* lo, reg* hi) {
    const __m512i b = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    *lo = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(b, 28), 28));
    *hi = _mm512_cvtepi32_ps(_mm512_srai_epi32(b, 4));
  }
};
}  // namespace

void stream_avx512(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  stream_impl<Avx512>(p, m0, m1, n0, n1);
}
void dequant_avx512(const Problem& p, int64_t k0, int64_t k1, int64_t n0, int64_t n1, float* out,
                    int64_t ld) {
  dequant_impl<Avx512>(p, k0, k1, n0, n1, out, ld);
}
}  // namespace rc_wo
