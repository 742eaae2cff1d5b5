// The SIMD kernels, written once over a vector-traits type V and included by wo_avx2.cc and
// wo_avx512.cc, each compiled for its own instruction set (#pragma GCC target before this header).
//
// V provides: W (floats per vector), reg, zero(), set1(float), load_q8(const int8_t*) -> the W int8
// values at the pointer as floats, load_q4(const int8_t*, reg* lo, reg* hi) -> low / high nibbles of
// W bytes as floats, loadf(const float*), fmadd(a, b, c) = a * b + c, add, mul, store(float*, reg).
//
// Each converted weight vector serves all MR rows of x, so converting costs 1/MR per multiply-add.
// Group-wise scales: a per-block partial sum, folded into the result with the group's scales
// (sum_k x_k q_k s_g = s_g * sum_k x_k q_k), which is the reference up to float rounding.
#pragma once
#include "wo_kernels.h"

namespace rc_wo {
namespace {

// Streaming kernel, MR (<= 4) rows of x at a time. A thread owns a wide column range and walks it once per
// block of 16 byte rows, so the weight is read as 16 sequential streams that the prefetchers follow;
// the partial sums live in y (L1/L2-resident) between blocks. Blocks never straddle a scale group. (The
// tile kernel it replaced swept all K rows for 256 columns at a time: on the [K, N] layout that reads
// 128-256 bytes from a new 4 KB page per weight row, and ran 2-3x slower from memory.)
template <class V, int MR, int BITS, bool GROUPED>
inline void stream_rows(const Problem& p, int64_t m, int64_t n0, int64_t n1) {
  using R = typename V::reg;
  // Independent accumulator chains: an FMA waits ~4 cycles for its accumulator, so with one row of x
  // (decode) and 2 vectors per column step the kernel was latency-bound (int4 AVX2: 32 weights per 4
  // cycles). One row takes 4 vectors per step and two accumulator sets (int8: even / odd weight rows;
  // int4: low / high nibbles), two rows take 2 vectors and two sets; 3-4 rows have enough chains.
  constexpr int U = MR == 1 ? 4 : 2;              // vectors per column step
  constexpr int S = MR <= 2 ? 2 : 1;              // accumulator sets
  constexpr int64_t SPAN = BITS == 8 ? 16 : 32;   // weight rows per block: 16 byte rows
  const int64_t K = p.K, N = p.N;
  const int64_t nv = n0 + (n1 - n0) / (U * V::W) * (U * V::W);
  for (int r = 0; r < MR; ++r)
    for (int64_t n = n0; n < n1; ++n) p.y[(m + r) * N + n] = 0.f;
  for (int64_t k0 = 0; k0 < K;) {
    int64_t k1 = k0 + SPAN < K ? k0 + SPAN : K;
    if (GROUPED) {
      const int64_t next = (k0 / p.group + 1) * p.group;  // even for int4, so k0 stays even
      k1 = next < k1 ? next : k1;
    }
    const float* s = GROUPED ? p.scale + (k0 / p.group) * N : nullptr;
    const float* x = p.x + m * K;
    for (int64_t n = n0; n < nv; n += U * V::W) {
      R part[S][MR][U];
      for (int a = 0; a < S; ++a)
        for (int r = 0; r < MR; ++r)
          for (int u = 0; u < U; ++u) part[a][r][u] = V::zero();
      if (BITS == 8) {
        const int8_t* w = p.q + k0 * N + n;
        int64_t k = k0;
        if (S == 2) {
          for (; k + 1 < k1; k += 2, w += 2 * N) {
            for (int u = 0; u < U; ++u) {
              const R w0 = V::load_q8(w + u * V::W), w1 = V::load_q8(w + N + u * V::W);
              for (int r = 0; r < MR; ++r) {
                part[0][r][u] = V::fmadd(V::set1(x[r * K + k]), w0, part[0][r][u]);
                part[S - 1][r][u] = V::fmadd(V::set1(x[r * K + k + 1]), w1, part[S - 1][r][u]);
              }
            }
          }
        }
        for (; k < k1; ++k, w += N) {
          R wv[U];
          for (int u = 0; u < U; ++u) wv[u] = V::load_q8(w + u * V::W);
          for (int r = 0; r < MR; ++r) {
            const R xb = V::set1(x[r * K + k]);
            for (int u = 0; u < U; ++u) part[0][r][u] = V::fmadd(xb, wv[u], part[0][r][u]);
          }
        }
      } else {
        const int8_t* w = p.q + (k0 >> 1) * N + n;
        int64_t k = k0;
        for (; k + 1 < k1; k += 2, w += N) {
          for (int u = 0; u < U; ++u) {
            R lo, hi;
            V::load_q4(w + u * V::W, &lo, &hi);
            for (int r = 0; r < MR; ++r) {
              part[0][r][u] = V::fmadd(V::set1(x[r * K + k]), lo, part[0][r][u]);
              part[S - 1][r][u] = V::fmadd(V::set1(x[r * K + k + 1]), hi, part[S - 1][r][u]);
            }
          }
        }
        if (k < k1) {  // odd K: the last byte's high nibble is padding
          for (int u = 0; u < U; ++u) {
            R lo, hi;
            V::load_q4(w + u * V::W, &lo, &hi);
            for (int r = 0; r < MR; ++r) part[0][r][u] = V::fmadd(V::set1(x[r * K + k]), lo, part[0][r][u]);
          }
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int u = 0; u < U; ++u) {
          const R sum = S == 2 ? V::add(part[0][r][u], part[S - 1][r][u]) : part[0][r][u];
          float* y = p.y + (m + r) * N + n + u * V::W;
          V::store(y, GROUPED ? V::fmadd(sum, V::loadf(s + n + u * V::W), V::loadf(y)) : V::add(sum, V::loadf(y)));
        }
    }
    for (int r = 0; r < MR; ++r)  // columns left over from the vector steps
      for (int64_t c = nv; c < n1; ++c) {
        float part = 0.f;
        for (int64_t k = k0; k < k1; ++k) part += x[r * K + k] * static_cast<float>(weight_at(p, k, c));
        p.y[(m + r) * N + c] += GROUPED ? part * s[c] : part;
      }
    k0 = k1;
  }
  if (!GROUPED)
    for (int r = 0; r < MR; ++r)
      for (int64_t n = n0; n < n1; ++n) p.y[(m + r) * N + n] *= p.scale[n];
}

template <class V, int BITS, bool GROUPED>
inline void stream_bits(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4) stream_rows<V, 4, BITS, GROUPED>(p, m, n0, n1);
  switch (m1 - m) {
    case 3: stream_rows<V, 3, BITS, GROUPED>(p, m, n0, n1); break;
    case 2: stream_rows<V, 2, BITS, GROUPED>(p, m, n0, n1); break;
    case 1: stream_rows<V, 1, BITS, GROUPED>(p, m, n0, n1); break;
    default: break;
  }
}

template <class V>
void stream_impl(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const bool grouped = p.group > 0;
  if (p.bits == 8) {
    grouped ? stream_bits<V, 8, true>(p, m0, m1, n0, n1) : stream_bits<V, 8, false>(p, m0, m1, n0, n1);
  } else {
    grouped ? stream_bits<V, 4, true>(p, m0, m1, n0, n1) : stream_bits<V, 4, false>(p, m0, m1, n0, n1);
  }
}

template <class V>
void dequant_impl(const Problem& p, int64_t k0, int64_t k1, int64_t n0, int64_t n1, float* out,
                  int64_t ld) {
  using R = typename V::reg;
  const int64_t N = p.N;
  for (int64_t k = k0; k < k1; ++k) {
    const float* s = p.group > 0 ? p.scale + (k / p.group) * N : p.scale;
    float* o = out + (k - k0) * ld - n0;
    int64_t n = n0;
    if (p.bits == 8) {
      const int8_t* w = p.q + k * N;
      for (; n + V::W <= n1; n += V::W) V::store(o + n, V::mul(V::load_q8(w + n), V::loadf(s + n)));
    } else {
      const int8_t* w = p.q + (k >> 1) * N;
      for (; n + V::W <= n1; n += V::W) {
        R lo, hi;
        V::load_q4(w + n, &lo, &hi);
        V::store(o + n, V::mul((k & 1) ? hi : lo, V::loadf(s + n)));
      }
    }
    for (; n < n1; ++n) o[n] = static_cast<float>(weight_at(p, k, n)) * s[n];
  }
}

}  // namespace
}  // namespace rc_wo
