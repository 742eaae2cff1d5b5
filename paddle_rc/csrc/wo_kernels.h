// Weight-only matmul kernels: y[M, N] = x[M, K] @ dequant(q, scale), in paddle_rc's checkpoint layout
// (paddle_rc/quant/functional.py): int8 q [K, N]; int4 q [ceil(K/2), N] with row 2r in the low and
// row 2r+1 in the high nibble of byte row r; scale [N] (per channel) or [ceil(K/group), N].
//
// Three builds of the same kernels (scalar, AVX2, AVX-512), picked at run time by the CPU's flags.
// Only plain C types cross this header, so no inline library code is compiled with AVX-512 flags
// and then shared with the generic build.
#pragma once
#include <cstddef>
#include <cstdint>

namespace rc_wo {

struct Problem {
  const float* x;       // [M, K], row-major
  const int8_t* q;      // see above
  const float* scale;   // [N] or [groups, N]
  float* y;             // [M, N], row-major
  int64_t M, K, N;
  int bits;             // 8 or 4
  int64_t group;        // -1: per channel; else rows per group (even when bits == 4)
};

// Rows [m0, m1) x columns [n0, n1) of y, reading the quantized weight directly (few rows: decode).
using StreamFn = void (*)(const Problem&, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
// out[k - k0][n - n0] = dequant(W)[k][n] for k in [k0, k1), n in [n0, n1); ld = row stride of out.
using DequantFn = void (*)(const Problem&, int64_t k0, int64_t k1, int64_t n0, int64_t n1,
                           float* out, int64_t ld);

void stream_scalar(const Problem&, int64_t, int64_t, int64_t, int64_t);
void dequant_scalar(const Problem&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
void stream_avx2(const Problem&, int64_t, int64_t, int64_t, int64_t);
void dequant_avx2(const Problem&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
void stream_avx512(const Problem&, int64_t, int64_t, int64_t, int64_t);
void dequant_avx512(const Problem&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);

// The signed value of a weight, scalar (tails and the generic build).
static inline int weight_at(const Problem& p, int64_t k, int64_t n) {
  if (p.bits == 8) return p.q[k * p.N + n];
  const int b = p.q[(k >> 1) * p.N + n];            // sign-extended byte
  return (k & 1) ? (b >> 4) : (static_cast<int>(static_cast<uint32_t>(b) << 28) >> 28);  // signed nibbles
}

static inline float scale_at(const Problem& p, int64_t k, int64_t n) {
  return p.group < 0 ? p.scale[n] : p.scale[(k / p.group) * p.N + n];
}

}  // namespace rc_wo
