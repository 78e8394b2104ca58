// Software __half / __nv_bfloat16 for the CUDA emulator: storage types with the conversions the
// kernels use, all round-to-nearest-even as the CUDA intrinsics with the _rn suffix are (IEEE
// 754-2008 binary16; bfloat16 = the upper half of a binary32). Plain C++, no CUDA.
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  unsigned short __x;
};
struct __half2 {
  __half x, y;  // x at the lower address
};
struct __nv_bfloat16 {
  unsigned short __x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

namespace repsr_emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// binary32 -> binary16, round to nearest even, with subnormals, overflow to infinity and NaN kept
// quiet (payload truncated, never turned into infinity).
inline unsigned short float_to_half_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u)  // Inf or NaN
    return static_cast<unsigned short>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
  if (abs >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // rounds to >= 65520
  const int exp = static_cast<int>(abs >> 23) - 127;
  if (exp < -25) return static_cast<unsigned short>(sign);  // below half the smallest subnormal
  uint32_t mant = (abs & 0x7fffffu) | (exp > -127 ? 0x800000u : 0u);  // implicit bit
  // Shift so the result's last kept bit is at position 0: normal halves keep 10 fraction bits.
  const int shift = exp >= -14 ? 13 : 13 + (-14 - exp);
  uint32_t kept = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (kept & 1u))) ++kept;
  if (exp >= -14) {
    // kept holds 1.fraction (11 bits); a carry out of the fraction bumps the exponent, which the
    // addition below does by itself.
    return static_cast<unsigned short>(sign | ((static_cast<uint32_t>(exp + 15) << 10) + (kept - 0x400u)));
  }
  return static_cast<unsigned short>(sign | kept);  // subnormal (a carry makes the smallest normal)
}

inline float half_bits_to_float(unsigned short h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  int e = -14;  // subnormal: normalize
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_float(sign | (static_cast<uint32_t>(e + 127) << 23) | ((mant & 0x3ffu) << 13));
}

inline unsigned short float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t round = 0x7fffu + ((u >> 16) & 1u);  // ties to even; overflow carries into Inf
  return static_cast<unsigned short>((u + round) >> 16);
}

inline float bf16_bits_to_float(unsigned short b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace repsr_emu

inline __half __float2half_rn(float f) { return __half{repsr_emu::float_to_half_bits(f)}; }
inline float __half2float(__half h) { return repsr_emu::half_bits_to_float(h.__x); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{repsr_emu::float_to_bf16_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return repsr_emu::bf16_bits_to_float(b.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
