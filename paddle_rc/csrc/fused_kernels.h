// Elementwise and row kernels for paddle_rc's fused inference ops (fused_ops.cc): softmax over the
// last axis, rotary embedding, SwiGLU and CLIP's quick_gelu. Paddle 3.3's CPU kernels for these run
// on one thread and without vectorised exp (a [32, 653, 653] softmax 37-49 ms, exp 21 ms, sigmoid of
// [653, 11008] 11 ms on a 2-core Intel Xeon); these use every OpenMP thread and AVX-512 where the CPU
// has it, else AVX2 + FMA. Three builds (scalar, AVX2, AVX-512) behind plain-C function pointers, as
// in wo_kernels.h.
#pragma once
#include <cstdint>

namespace rc_fused {

// out[r, :] = softmax(x[r, :]) for rows [r0, r1) of width n.
using SoftmaxFn = void (*)(const float* x, float* out, int64_t r0, int64_t r1, int64_t n);
// out = x * cos + roll(x, d / 2) * sin over rows [r0, r1) of width d; cos/sin rows are picked by
// the caller (one per (batch, position), shared by the heads).
using RopeRowFn = void (*)(const float* x, const float* cos, const float* sin, float* out, int64_t d);
// out[i] = silu(g[i]) * u[i] for i in [i0, i1).
using SwigluFn = void (*)(const float* g, const float* u, float* out, int64_t i0, int64_t i1);
// out[i] = x[i] * sigmoid(1.702 x[i]) for i in [i0, i1).
using QuickGeluFn = void (*)(const float* x, float* out, int64_t i0, int64_t i1);

struct Kernels {
  SoftmaxFn softmax;
  RopeRowFn rope_row;
  SwigluFn swiglu;
  QuickGeluFn quick_gelu;
  const char* name;
};

Kernels scalar_kernels();
Kernels avx2_kernels();
Kernels avx512_kernels();

}  // namespace rc_fused
