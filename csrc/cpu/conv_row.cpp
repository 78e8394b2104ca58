// conv_row for each ISA: a small vector type per ISA, then the shared kernel (conv_row_kernel.inc)
// compiled in its namespace. The x86 variants use target attributes rather than -mavx2/-mavx512f,
// so this file builds with plain -O3 and the caller picks the variant at runtime.
#include "conv_row.h"

#include <cstring>

#ifdef REPSR_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

namespace repsr {
namespace cpu {

// ---- portable: 4-float vectors, the width of SSE2 and NEON registers ---------------------------
namespace portable {
#define REPSR_TARGET

struct Vec {
  static constexpr int kLanes = portable::kLanes;
#if defined(__GNUC__)  // GCC / Clang vector extension
  typedef float T __attribute__((vector_size(kLanes * sizeof(float))));
  static T load(const float* p) {
    T r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static void store(float* p, T v) { std::memcpy(p, &v, sizeof v); }
  static T broadcast(const float* p) { return T{} + *p; }
  static T fmadd(T a, T b, T c) { return a * b + c; }
  static T leaky(T v, T slope) { return v >= 0.0f ? v : slope * v; }
  static T set1(float s) { return T{} + s; }
  static T zero() { return T{}; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T fnmadd(T a, T b, T c) { return c - a * b; }
#else
  struct T {
    float lane[kLanes];
  };
  static T load(const float* p) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = p[i];
    return r;
  }
  static void store(float* p, const T& v) {
    for (int i = 0; i < kLanes; ++i) p[i] = v.lane[i];
  }
  static T broadcast(const float* p) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = *p;
    return r;
  }
  static T fmadd(const T& a, const T& b, const T& c) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = a.lane[i] * b.lane[i] + c.lane[i];
    return r;
  }
  static T leaky(const T& v, const T& slope) {
    T r;
    for (int i = 0; i < kLanes; ++i)
      r.lane[i] = v.lane[i] >= 0.0f ? v.lane[i] : slope.lane[i] * v.lane[i];
    return r;
  }
  static T set1(float s) { return broadcast(&s); }
  static T zero() { return set1(0.0f); }
  static T add(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = a.lane[i] + b.lane[i];
    return r;
  }
  static T sub(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = a.lane[i] - b.lane[i];
    return r;
  }
  static T mul(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = a.lane[i] * b.lane[i];
    return r;
  }
  static T fnmadd(const T& a, const T& b, const T& c) {
    T r;
    for (int i = 0; i < kLanes; ++i) r.lane[i] = c.lane[i] - a.lane[i] * b.lane[i];
    return r;
  }
#endif
};

constexpr int kMaxVectorsPerBlock = 2;
constexpr int pixels_per_block(int /*vectors*/) { return 4; }

#include "conv_row_kernel.inc"
#include "winograd_kernel.inc"
#undef REPSR_TARGET
}  // namespace portable

#ifdef REPSR_HAVE_X86_KERNELS
// ---- AVX2 + FMA: 16 ymm registers, so at most 12 accumulators --------------------------------
namespace avx2 {
#define REPSR_TARGET __attribute__((target("avx2,fma")))
#define REPSR_VEC_OP __attribute__((target("avx2,fma"), always_inline)) static inline

struct Vec {
  static constexpr int kLanes = avx2::kLanes;
  using T = __m256;
  REPSR_VEC_OP T load(const float* p) { return _mm256_loadu_ps(p); }
  REPSR_VEC_OP void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  REPSR_VEC_OP T broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  REPSR_VEC_OP T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  // Takes slope * v where v's sign bit is set; -0.0 * slope is still a zero.
  REPSR_VEC_OP T leaky(T v, T slope) { return _mm256_blendv_ps(v, _mm256_mul_ps(v, slope), v); }
  REPSR_VEC_OP T set1(float s) { return _mm256_set1_ps(s); }
  REPSR_VEC_OP T zero() { return _mm256_setzero_ps(); }
  REPSR_VEC_OP T add(T a, T b) { return _mm256_add_ps(a, b); }
  REPSR_VEC_OP T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  REPSR_VEC_OP T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  REPSR_VEC_OP T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
};

// pixels x vectors: 12x1, 6x2, 4x3 accumulators, leaving registers for weights and a broadcast.
constexpr int kMaxVectorsPerBlock = 3;
constexpr int pixels_per_block(int vectors) { return vectors == 1 ? 12 : vectors == 2 ? 6 : 4; }

#include "conv_row_kernel.inc"
#include "winograd_kernel.inc"
#undef REPSR_VEC_OP
#undef REPSR_TARGET
}  // namespace avx2

// ---- AVX-512F: 32 zmm registers, up to 24 accumulators; broadcasts fold into the FMAs --------
namespace avx512 {
#define REPSR_TARGET __attribute__((target("avx512f")))
#define REPSR_VEC_OP __attribute__((target("avx512f"), always_inline)) static inline

struct Vec {
  static constexpr int kLanes = avx512::kLanes;
  using T = __m512;
  REPSR_VEC_OP T load(const float* p) { return _mm512_loadu_ps(p); }
  REPSR_VEC_OP void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  REPSR_VEC_OP T broadcast(const float* p) { return _mm512_set1_ps(*p); }
  REPSR_VEC_OP T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  REPSR_VEC_OP T leaky(T v, T slope) {
    return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, slope);
  }
  REPSR_VEC_OP T set1(float s) { return _mm512_set1_ps(s); }
  REPSR_VEC_OP T zero() { return _mm512_setzero_ps(); }
  REPSR_VEC_OP T add(T a, T b) { return _mm512_add_ps(a, b); }
  REPSR_VEC_OP T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  REPSR_VEC_OP T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  REPSR_VEC_OP T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
};

// pixels x vectors: 16x1, 12x2, 8x3, 7x4 accumulators (28 + 4 weight vectors: all 32 zmm;
// broadcasts fold into the FMAs). 7x4 measured ~1% faster than 6x4 on the 64-channel net.
constexpr int kMaxVectorsPerBlock = 4;
constexpr int pixels_per_block(int vectors) {
  return vectors == 1 ? 16 : vectors == 2 ? 12 : vectors == 3 ? 8 : 7;
}

#include "conv_row_kernel.inc"
#include "winograd_kernel.inc"
#undef REPSR_VEC_OP
#undef REPSR_TARGET
}  // namespace avx512
#endif  // REPSR_HAVE_X86_KERNELS

}  // namespace cpu
}  // namespace repsr
