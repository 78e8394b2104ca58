// The CUDA surface that csrc/cuda uses, for the host compiler: what csrc/cuda/emulation/include/
// puts in place of <cuda_runtime.h>, <cuda_fp16.h> and <cuda_bf16.h> when REPSR_CUDA_EMULATION is
// defined. The kernels' own source compiles unchanged against it and runs on the CPU (runtime.cpp):
// one fiber per CUDA thread, blocks on several OS threads, every memory access checked. What it
// checks and what it cannot: csrc/cuda/README.md, "Emulation".
#pragma once

#if !defined(REPSR_CUDA_EMULATION)
#error "cuda_emu.h is the CUDA emulator: compile with -DREPSR_CUDA_EMULATION and csrc/cuda/emulation/include first on the include path"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "soft_float.h"

// ---- Qualifiers ---------------------------------------------------------------------------------
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

// ---- Vector types -------------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return uint4{x, y, z, w};
}

// ---- Runtime API (the calls csrc/cuda makes) ----------------------------------------------------
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0, constSizeBytes = 0, localSizeBytes = 0;
  int maxThreadsPerBlock = 1024, numRegs = 0;
  int ptxVersion = 0, binaryVersion = 0;  // 10 * major + minor of the image the device would run
  int cacheModeCA = 0, maxDynamicSharedSizeBytes = 0, preferredShmemCarveout = -1;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

namespace repsr_emu {
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* func);
}  // namespace repsr_emu

template <class T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return repsr_emu::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}
template <class T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* func) {
  return repsr_emu::func_get_attributes(attr, reinterpret_cast<const void*>(func));
}

// ---- Device side: the hooks behind the built-ins --------------------------------------------------
namespace repsr_emu {

uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void syncthreads(const char* file, int line);
[[noreturn]] void trap(const char* file, int line);
unsigned char* dynamic_smem();
size_t shared_offset(const void* p);  // __cvta_generic_to_shared

enum class Access : int { kSharedLoad = 0, kSharedStore = 1, kGlobalLoad = 2, kGlobalStore = 3 };
// One lane's access. Inactive lanes (active = false) take part in the warp request without
// touching memory, so a predicated access groups like the GPU's.
void access(Access kind, const void* p, size_t bytes, bool active, void* data, const char* file,
            int line);

template <typename T>
T load(Access kind, const T* p, bool active, T otherwise, const char* file, int line) {
  T v = otherwise;
  access(kind, p, sizeof(T), active, &v, file, line);
  return v;
}
template <typename T>
void store(Access kind, T* p, const T& v, bool active, const char* file, int line) {
  T copy = v;
  access(kind, p, sizeof(T), active, &copy, file, line);
}

// Warp collectives, from the PTX ISA's fragment tables (runtime.cpp cites the sections).
void ldmatrix_x4(uint32_t (&r)[4], uint32_t shared_addr, const char* file, int line);
enum class MmaType : int { kF16 = 0, kBF16 = 1 };
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, MmaType type,
                  const char* file, int line);

// Runs `body` as every thread of every block of the grid; returns what the real launch would
// report (cudaGetLastError) and records the launch (its counters) in launches().
cudaError_t launch(const char* name, const void* func, dim3 grid, dim3 block, size_t dynamic_smem,
                   cudaStream_t stream, std::function<void()> body);

// What REPSR_LAUNCH(kernel, ...)(args...) expands to.
template <typename Kernel>
struct Launch {
  Kernel kernel;
  const char* name;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <typename... Args>
  void operator()(const Args&... args) const {
    const Kernel k = kernel;
    launch(name, reinterpret_cast<const void*>(k), grid, block, smem, stream,
           [k, args...]() { k(args...); });
  }
};
template <typename Kernel>
Launch<Kernel> make_launch(Kernel kernel, const char* name, dim3 grid, dim3 block, size_t smem,
                           cudaStream_t stream) {
  return Launch<Kernel>{kernel, name, grid, block, smem, stream};
}

}  // namespace repsr_emu

#define threadIdx (::repsr_emu::thread_idx())
#define blockIdx (::repsr_emu::block_idx())
#define blockDim (::repsr_emu::block_dim())
#define gridDim (::repsr_emu::grid_dim())

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  repsr_emu::syncthreads(file, line);
}
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  repsr_emu::trap(file, line);
}
// ld.global.nc: the emulator also checks that nothing in the same launch writes what it reads.
template <typename T>
inline T __ldg(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return repsr_emu::load(repsr_emu::Access::kGlobalLoad, p, true, T{}, file, line);
}
inline size_t __cvta_generic_to_shared(const void* p) { return repsr_emu::shared_offset(p); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }  // ties to even
inline float __fdiv_rn(float a, float b) { return a / b; }  // IEEE division (no fast math here)
