// Fused float32 inference ops for CPU: rc_softmax (last axis), rc_rope, rc_swiglu, rc_quick_gelu.
// Forward only: paddle_rc calls them in dynamic mode without gradients (paddle_rc/native.py); traced
// graphs and training keep Paddle's own ops, so exported programs never need them.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "fused_kernels.h"
#include "paddle/extension.h"

namespace rc_fused {
namespace {

void softmax_scalar(const float* x, float* out, int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = out + r * n;
    const float mx = *std::max_element(xr, xr + n);
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += (yr[i] = std::exp(xr[i] - mx));
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < n; ++i) yr[i] *= inv;
  }
}

void rope_row_scalar(const float* x, const float* cos, const float* sin, float* out, int64_t d) {
  const int64_t h = d / 2;
  for (int64_t j = 0; j < d; ++j) out[j] = x[j] * cos[j] + x[(j + h) % d] * sin[j];
}

void swiglu_scalar(const float* g, const float* u, float* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

void quick_gelu_scalar(const float* x, float* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = x[i] / (1.f + std::exp(-1.702f * x[i]));
}

// The widest build the CPU runs; PADDLE_RC_WO_ISA=avx2 or =scalar forces a narrower one, so the
// tests check every build the machine can run.
Kernels kernels() {
  const char* env = std::getenv("PADDLE_RC_WO_ISA");
  const std::string force = env ? env : "";
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (force == "scalar") return scalar_kernels();
  if (force != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return avx512_kernels();
  if (avx2) return avx2_kernels();
  return scalar_kernels();
}

void check(const paddle::Tensor& t, const char* op, const char* what) {
  PD_CHECK(t.is_cpu(), op, ": runs on CPU only");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, op, ": ", what, " must be float32");
  PD_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous");
}

// Elementwise work in chunks of 4096 (16 KB of floats) spread over the threads.
template <typename F>
void elementwise(int64_t n, F f) {
  const int64_t chunk = 4096, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) f(c * chunk, std::min(n, (c + 1) * chunk));
}

}  // namespace

Kernels scalar_kernels() { return {softmax_scalar, rope_row_scalar, swiglu_scalar, quick_gelu_scalar, "scalar"}; }

}  // namespace rc_fused

std::vector<paddle::Tensor> Softmax(const paddle::Tensor& x) {
  rc_fused::check(x, "rc_softmax", "x");
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  const int64_t n = x.shape().empty() ? 1 : x.shape().back();
  if (x.numel() == 0 || n == 0) return {out};
  const int64_t rows = x.numel() / n;
  const auto fn = rc_fused::kernels().softmax;
  const float* px = x.data<float>();
  float* py = out.data<float>();
  const int64_t block = std::max<int64_t>(1, 8192 / n);  // rows per task: ~32 KB of a row block
  const int64_t tasks = (rows + block - 1) / block;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) fn(px, py, t * block, std::min(rows, (t + 1) * block), n);
  return {out};
}

// x [B, H, S, d]; cos, sin [B, 1 or H, S, d] (the sign of rotate_half folded into sin's first half).
std::vector<paddle::Tensor> Rope(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin) {
  for (auto p : {std::make_pair(&x, "x"), std::make_pair(&cos, "cos"), std::make_pair(&sin, "sin")})
    rc_fused::check(*p.first, "rc_rope", p.second);
  const auto xs = x.shape(), cs = cos.shape();
  PD_CHECK(xs.size() == 4 && cs.size() == 4 && sin.shape() == cs, "rc_rope: x, cos, sin must be 4-D, cos == sin");
  const int64_t B = xs[0], H = xs[1], S = xs[2], d = xs[3];
  PD_CHECK(cs[0] == B && (cs[1] == 1 || cs[1] == H) && cs[2] == S && cs[3] == d && d % 2 == 0,
           "rc_rope: cos/sin must be [B, 1 or H, S, d] for x [B, H, S, d] with an even d");
  auto out = paddle::empty(xs, paddle::DataType::FLOAT32, x.place());
  if (x.numel() == 0) return {out};
  const auto fn = rc_fused::kernels().rope_row;
  const float *px = x.data<float>(), *pc = cos.data<float>(), *ps = sin.data<float>();
  float* py = out.data<float>();
  const int64_t rows = B * H * S, ch = cs[1];
#pragma omp parallel for schedule(static) if (rows * d > 4096)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (H * S), h = (r / S) % H, s = r % S;
    const int64_t c = ((b * ch + (ch == 1 ? 0 : h)) * S + s) * d;
    fn(px + r * d, pc + c, ps + c, py + r * d, d);
  }
  return {out};
}

std::vector<paddle::Tensor> Swiglu(const paddle::Tensor& g, const paddle::Tensor& u) {
  rc_fused::check(g, "rc_swiglu", "gate");
  rc_fused::check(u, "rc_swiglu", "up");
  PD_CHECK(g.shape() == u.shape(), "rc_swiglu: gate and up must have one shape");
  auto out = paddle::empty(g.shape(), paddle::DataType::FLOAT32, g.place());
  const auto fn = rc_fused::kernels().swiglu;
  const float *pg = g.data<float>(), *pu = u.data<float>();
  float* py = out.data<float>();
  rc_fused::elementwise(g.numel(), [&](int64_t i0, int64_t i1) { fn(pg, pu, py, i0, i1); });
  return {out};
}

std::vector<paddle::Tensor> QuickGelu(const paddle::Tensor& x) {
  rc_fused::check(x, "rc_quick_gelu", "x");
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  const auto fn = rc_fused::kernels().quick_gelu;
  const float* px = x.data<float>();
  float* py = out.data<float>();
  rc_fused::elementwise(x.numel(), [&](int64_t i0, int64_t i1) { fn(px, py, i0, i1); });
  return {out};
}

std::vector<std::vector<int64_t>> SameShape(const std::vector<int64_t>& x) { return {x}; }
std::vector<std::vector<int64_t>> FirstShape3(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                              const std::vector<int64_t>&) { return {x}; }
std::vector<std::vector<int64_t>> FirstShape2(const std::vector<int64_t>& x, const std::vector<int64_t>&) {
  return {x};
}
std::vector<paddle::DataType> SameDtype(const paddle::DataType& x) { return {x}; }
std::vector<paddle::DataType> FirstDtype3(const paddle::DataType& x, const paddle::DataType&, const paddle::DataType&) {
  return {x};
}
std::vector<paddle::DataType> FirstDtype2(const paddle::DataType& x, const paddle::DataType&) { return {x}; }

PD_BUILD_OP(rc_softmax)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Softmax))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_OP(rc_rope)
    .Inputs({"X", "Cos", "Sin"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Rope))
    .SetInferShapeFn(PD_INFER_SHAPE(FirstShape3))
    .SetInferDtypeFn(PD_INFER_DTYPE(FirstDtype3));

PD_BUILD_OP(rc_swiglu)
    .Inputs({"Gate", "Up"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Swiglu))
    .SetInferShapeFn(PD_INFER_SHAPE(FirstShape2))
    .SetInferDtypeFn(PD_INFER_DTYPE(FirstDtype2));

PD_BUILD_OP(rc_quick_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(QuickGelu))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));
