// Device helpers shared by the segment kernels: image element loads/stores for every dtype, the
// tail's per-pixel epilogue, and the tensor-core primitives (ldmatrix, mma.sync m16n8k16).
// torch builds pass -D__CUDA_NO_HALF_CONVERSIONS__ etc., so every conversion here is explicit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.cuh"
#include "tiling.cuh"

namespace repsr {
namespace cuda {

// ---- Image elements -----------------------------------------------------------------------------
// Reads element (n, c, y, x) of `im` as float; uint8 means value / 255. The caller checks bounds.
__device__ __forceinline__ float load_image(const ImageRef& im, int64_t n, int64_t c, int64_t y,
                                            int64_t x) {
  const int64_t off = image_offset(im, n, c, y, x);
  switch (im.dtype) {
    case DType::kFloat32:
      return __ldg(static_cast<const float*>(im.data) + off);
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(im.data)[off]);
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(im.data)[off]);
    case DType::kUInt8:
      // IEEE division (not the --use_fast_math reciprocal), as the CPU chain does.
      return __fdiv_rn(static_cast<float>(static_cast<const uint8_t*>(im.data)[off]), 255.0f);
  }
  return 0.0f;
}

// Writes v (already clamped where the op asks for it) to element `off` of `im`; uint8 output is
// clamped to [0, 1], scaled by 255 and rounded half-to-even.
__device__ __forceinline__ void store_image(const ImageRef& im, int64_t off, float v) {
  switch (im.dtype) {
    case DType::kFloat32:
      static_cast<float*>(im.data)[off] = v;
      break;
    case DType::kFloat16:
      static_cast<__half*>(im.data)[off] = __float2half_rn(v);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(im.data)[off] = __float2bfloat16_rn(v);
      break;
    case DType::kUInt8: {
      const float clamped = fminf(fmaxf(v, 0.0f), 1.0f);  // NaN -> 0
      static_cast<uint8_t*>(im.data)[off] = static_cast<uint8_t>(__float2int_rn(clamped * 255.0f));
      break;
    }
  }
}

// The tail's epilogue for one tail-conv value `v` (bias included) of tail channel `co` at
// low-resolution pixel (y, x) of image n: pixel shuffle, residual, clamp, store. The caller has
// checked that (y, x) is inside the image and co < the tail's cout.
__device__ __forceinline__ void tail_store(const SegmentParams& p, int64_t n, int64_t y, int64_t x,
                                           int co, float v) {
  const ShuffleTarget t = shuffle_target(co, p.scale);
  if (p.residual) v += load_image(p.image, n, t.c, y, x);
  if (p.clamp) v = fminf(fmaxf(v, 0.0f), 1.0f);
  const int64_t oy = y * p.scale + t.i, ox = x * p.scale + t.j;
  store_image(p.out, image_offset(p.out, n, t.c, oy, ox), v);
}

__device__ __forceinline__ float activate(float v, const float* slope, int co) {
  return (slope == nullptr || v >= 0.0f) ? v : v * __ldg(slope + co);
}

// ---- Tensor-core element types ------------------------------------------------------------------
template <typename T>
struct TcType;

template <>
struct TcType<__half> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // .x = lo (lower address)
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct TcType<__nv_bfloat16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l supplies the row address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  (void)addr;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// d += A(16x16, row) * B(16x8, col), float32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d; (void)a; (void)b0; (void)b1;
  __trap();
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d; (void)a; (void)b0; (void)b1;
  __trap();
#endif
}

// A launch-time error, as a static message: missing kernel images get their own (the usual cause
// when a GPU's architecture was left out of TORCH_CUDA_ARCH_LIST), others the caller's message.
inline const char* launch_problem(cudaError_t err, const char* message) {
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction)
    return "no kernel image for this GPU: rebuild with its architecture in TORCH_CUDA_ARCH_LIST";
  return message;
}

// Sets the dynamic shared-memory limit of `kernel` and launches it over the segment's tiles.
template <typename Kernel>
const char* launch_segment_kernel(Kernel kernel, const SegmentParams& p, int64_t smem_bytes,
                                  int64_t smem_limit, cudaStream_t stream, const char* attr_error,
                                  const char* launch_error) {
  const int64_t blocks = grid_blocks(p.grid);
  if (blocks <= 0) return nullptr;
  if (blocks > kMaxGridBlocks) return "too many tiles for one launch (grid limit 2^31 - 1)";
  if (smem_bytes > smem_limit) return "a segment needs more shared memory than the device has";
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_limit));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not a sticky error: clear it so later checks see their own
    return launch_problem(err, attr_error);
  }
  kernel<<<static_cast<unsigned int>(blocks), kThreads, static_cast<size_t>(smem_bytes), stream>>>(p);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : launch_problem(err, launch_error);
}

}  // namespace cuda
}  // namespace repsr
