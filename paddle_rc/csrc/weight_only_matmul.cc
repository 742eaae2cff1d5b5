// Custom operator rc_weight_only_matmul(x, qweight, scale; bits, group_size) -> x @ dequant(W).
//
// The float weight is never materialised whole:
// * few rows (decode): the streaming kernels read int8 / packed int4 directly, row block by row block,
//   and convert in registers; each thread owns a contiguous range of output columns;
// * many rows (prefill): each thread takes column tiles of W, dequantizes a tile block by block
//   (K_BLOCK x PANEL floats, sized to stay in the core's L2 cache) into its own buffer and
//   multiplies it with a one-thread MKL sgemm (the library Paddle itself ships), so the conversion
//   is paid once per weight element and amortised over all rows, and the float block is read back
//   from cache, not memory.
// Instruction set (AVX-512 / AVX2 / scalar) is picked per process from the CPU's flags.
// Threads: the OpenMP runtime Paddle uses (Intel's libiomp5, linked by the build), so this op and
// Paddle's own kernels share one thread pool and one thread count (paddle.set_num_threads /
// the predictor's set_cpu_math_library_num_threads).
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "paddle/extension.h"
#include "wo_kernels.h"

#ifdef RC_WITH_MKL
// MKL's CBLAS (constants as in mkl_cblas.h): x is packed once per call and reused for every panel.
extern "C" {
void cblas_sgemm(int layout, int transa, int transb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
int MKL_Set_Num_Threads_Local(int n);
}
constexpr int kRowMajor = 101, kNoTrans = 111;
#endif

namespace rc_wo {

void stream_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t width = n1 - n0;
  std::vector<float> part(width);
  const int64_t group = p.group > 0 ? p.group : p.K;
  for (int64_t m = m0; m < m1; ++m) {
    float* y = p.y + m * p.N;
    std::fill(y + n0, y + n1, 0.f);
    for (int64_t g0 = 0; g0 < p.K; g0 += group) {
      const int64_t g1 = std::min(g0 + group, p.K);
      std::fill(part.begin(), part.end(), 0.f);
      for (int64_t k = g0; k < g1; ++k) {
        const float xv = p.x[m * p.K + k];
        for (int64_t c = 0; c < width; ++c) part[c] += xv * static_cast<float>(weight_at(p, k, n0 + c));
      }
      for (int64_t c = 0; c < width; ++c) y[n0 + c] += part[c] * scale_at(p, g0, n0 + c);
    }
  }
}

void dequant_scalar(const Problem& p, int64_t k0, int64_t k1, int64_t n0, int64_t n1, float* out,
                    int64_t ld) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t n = n0; n < n1; ++n)
      out[(k - k0) * ld + (n - n0)] = static_cast<float>(weight_at(p, k, n)) * scale_at(p, k, n);
}

namespace {

struct Isa {
  StreamFn stream;
  DequantFn dequant;
  const char* name;
};

// The widest instruction set the CPU has; PADDLE_RC_WO_ISA=avx2|scalar picks a narrower one (the
// tests run every build of the kernels on one machine). Read per call: a getenv is nothing next
// to a matmul.
Isa isa() {
  if (const char* force = std::getenv("PADDLE_RC_WO_ISA")) {
    const std::string f(force);
    if (f == "scalar") return {stream_scalar, dequant_scalar, "scalar"};
    if (f == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return {stream_avx2, dequant_avx2, "avx2"};
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return {stream_avx512, dequant_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {stream_avx2, dequant_avx2, "avx2"};
  return {stream_scalar, dequant_scalar, "scalar"};
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

// Rows from which the tiled sgemm path beats the streaming kernels: 16 (4096 x 11008, weights cycled
// from memory, 2 threads, Intel Xeon: int8 at 12 / 24 rows stream 13.9 / 22.4 ms, sgemm 23.9 / 26.7;
// at 32 rows 45.8 against 32.2). The streaming kernel converts each weight once per 4 rows, the sgemm
// path once per call. PADDLE_RC_WO_GEMM_ROWS overrides it (the tests run both paths on the same shapes).
int64_t gemm_rows() { return env_int("PADDLE_RC_WO_GEMM_ROWS", 16); }
// A thread's float block: K_BLOCK x PANEL floats = 256 KB, within any core's L2. Its shape depends on the
// vendor. Intel: 128 x 512, wide and short, so dequantizing reads 512 contiguous bytes per weight row
// instead of 64 from a new page per row (4096 x 11008 int8 from memory, 2 threads, Intel Xeon: 636 rows
// 241-257 ms against 277-309 with 1024 x 64, float32 237; 127 rows 46-68 against 80-82). AMD Zen 4:
// 1024 x 64, measured faster at rc-sized prompts there (same weight, 130 rows, six interleaved
// rounds: int8 60.6-62.6 ms against 62.9-65.5, int4 59.1-60.3 against 59.8-63.1, float32 61.0-62.8;
// 636 rows equal). docs/weight-only-kernel.md.
bool amd_cpu() {
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
}
int64_t panel_cols() { return std::max<int64_t>(1, env_int("PADDLE_RC_WO_PANEL", amd_cpu() ? 64 : 512)); }
int64_t k_block() {
  return std::max<int64_t>(64, env_int("PADDLE_RC_WO_KBLOCK", amd_cpu() ? 1024 : 128) / 64 * 64);
}

// Each thread one contiguous range of columns (whole cache lines of int8), swept by the streaming kernel.
void run_stream(const Problem& p) {
  const StreamFn fn = isa().stream;
#pragma omp parallel if (p.N >= 512)
  {
    const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t per = ((p.N + threads - 1) / threads + 63) / 64 * 64;
    const int64_t n0 = std::min(p.N, t * per), n1 = std::min(p.N, n0 + per);
    if (n0 < n1) fn(p, 0, p.M, n0, n1);
  }
}

#ifdef RC_WITH_MKL
void run_gemm(const Problem& p) {
  const int M = static_cast<int>(p.M), K = static_cast<int>(p.K), N = static_cast<int>(p.N);
  const int64_t panel = std::min(panel_cols(), p.N);
  const int64_t kb = std::min(k_block(), p.K);  // a multiple of 64: int4 byte rows stay whole
  const int64_t tiles = (p.N + panel - 1) / panel;
  const DequantFn dq = isa().dequant;
#pragma omp parallel if (tiles > 1)
  {
    // One sgemm thread inside each OpenMP thread: the tiles are the parallel work.
    const int saved = MKL_Set_Num_Threads_Local(1);
    std::unique_ptr<float[]> buf(new float[kb * panel]);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t n0 = t * panel, width = std::min(panel, p.N - n0);
      for (int64_t k0 = 0; k0 < p.K; k0 += kb) {
        const int64_t k1 = std::min(k0 + kb, p.K);
        dq(p, k0, k1, n0, n0 + width, buf.get(), width);
        cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, M, static_cast<int>(width), static_cast<int>(k1 - k0), 1.f,
                    p.x + k0, K, buf.get(), static_cast<int>(width), k0 == 0 ? 0.f : 1.f, p.y + n0, N);
      }
    }
    MKL_Set_Num_Threads_Local(saved);
  }
}
#endif

}  // namespace
}  // namespace rc_wo

std::vector<paddle::Tensor> WeightOnlyMatmul(const paddle::Tensor& x, const paddle::Tensor& qweight,
                                             const paddle::Tensor& scale, int bits, int group_size) {
  PD_CHECK(x.is_cpu() && qweight.is_cpu() && scale.is_cpu(), "rc_weight_only_matmul runs on CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "rc_weight_only_matmul: x must be float32");
  PD_CHECK(qweight.dtype() == paddle::DataType::INT8, "rc_weight_only_matmul: qweight must be int8");
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32, "rc_weight_only_matmul: scale must be float32");
  PD_CHECK(bits == 8 || bits == 4, "rc_weight_only_matmul: bits must be 8 or 4");
  const auto xs = x.shape();
  const auto qs = qweight.shape();
  PD_CHECK(xs.size() >= 1 && qs.size() == 2, "rc_weight_only_matmul: x [..., K], qweight [rows, N]");
  const int64_t K = xs.back(), N = qs[1];
  const int64_t rows = bits == 8 ? K : (K + 1) / 2;
  PD_CHECK(qs[0] == rows, "rc_weight_only_matmul: qweight has ", qs[0], " rows, x's last dim ", K,
           " needs ", rows);
  if (group_size > 0) {
    PD_CHECK(bits == 8 || group_size % 2 == 0, "rc_weight_only_matmul: int4 groups must be even");
    const auto ss = scale.shape();
    PD_CHECK(ss.size() == 2 && ss[0] == (K + group_size - 1) / group_size && ss[1] == N,
             "rc_weight_only_matmul: group scales must be [ceil(K/group), N]");
  } else {
    PD_CHECK(scale.numel() == N, "rc_weight_only_matmul: per-channel scale must have N elements");
  }
  std::vector<int64_t> out_shape(xs.begin(), xs.end() - 1);
  out_shape.push_back(N);
  auto xc = x.is_contiguous() ? x : x.contiguous();
  auto out = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  const int64_t M = K > 0 ? xc.numel() / K : 0;
  if (M == 0 || N == 0) return {out};
  if (K == 0) {
    std::fill(out.data<float>(), out.data<float>() + M * N, 0.f);
    return {out};
  }
  rc_wo::Problem p{xc.data<float>(), qweight.data<int8_t>(), scale.data<float>(), out.data<float>(),
                   M, K, N, bits, group_size > 0 ? static_cast<int64_t>(group_size) : -1};
#ifdef RC_WITH_MKL
  if (M >= rc_wo::gemm_rows()) {
    rc_wo::run_gemm(p);
    return {out};
  }
#endif
  rc_wo::run_stream(p);
  return {out};
}

std::vector<std::vector<int64_t>> WeightOnlyMatmulShape(const std::vector<int64_t>& x_shape,
                                                        const std::vector<int64_t>& q_shape,
                                                        const std::vector<int64_t>& s_shape) {
  std::vector<int64_t> out(x_shape.begin(), x_shape.end() - 1);
  out.push_back(q_shape[1]);
  return {out};
}

std::vector<paddle::DataType> WeightOnlyMatmulDtype(const paddle::DataType& x, const paddle::DataType&,
                                                    const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(rc_weight_only_matmul)
    .Inputs({"X", "QWeight", "Scale"})
    .Outputs({"Out"})
    .Attrs({"bits: int", "group_size: int"})
    .SetKernelFn(PD_KERNEL(WeightOnlyMatmul))
    .SetInferShapeFn(PD_INFER_SHAPE(WeightOnlyMatmulShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(WeightOnlyMatmulDtype));
