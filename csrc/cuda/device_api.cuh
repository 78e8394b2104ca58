// The CUDA the kernels are written against, and the only place where their source differs between
// nvcc and the CPU emulator (emulation/, REPSR_CUDA_EMULATION): the launch, the dynamic shared-
// memory declaration, and the memory accessors. Every load and store of shared or global memory in
// the kernels goes through ld_shared / st_shared / st_global / __ldg (or their predicated forms), so
// the emulator sees each access of each lane: bounds, initialization, races, bank conflicts and
// sectors. Under nvcc they are the plain dereferences they look like.
//
// Predicated forms (ld_global_if, ld_shared_if, st_global_if, st_shared_if) are for accesses that
// only some lanes of a warp make: the GPU runs them as one instruction with a predicate, and the
// emulator groups them the same way (a plain `if (c) st_global(...)` makes its lanes' later
// requests misalign in the emulator's counters, though its checks stay exact).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#if defined(REPSR_CUDA_EMULATION)

// REPSR_LAUNCH(kernel, "name", grid, block, smem, stream)(args...)
#define REPSR_LAUNCH(kernel, name, grid, block, smem, stream) \
  ::repsr_emu::make_launch(kernel, name, grid, block, smem, stream)
// The block's dynamic shared memory as `unsigned char name[]`, 16-byte aligned.
#define REPSR_DYNAMIC_SMEM(name) unsigned char* const name = ::repsr_emu::dynamic_smem()

namespace repsr {
namespace cuda {

template <typename T>
inline T ld_shared(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::repsr_emu::load(::repsr_emu::Access::kSharedLoad, p, true, T{}, file, line);
}
// *p when pred, else `otherwise` (p is not touched).
template <typename T>
inline T ld_shared_if(bool pred, const T* p, T otherwise, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return ::repsr_emu::load(::repsr_emu::Access::kSharedLoad, p, pred, otherwise, file, line);
}
template <typename T>
inline void st_shared(T* p, const T& v, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  ::repsr_emu::store(::repsr_emu::Access::kSharedStore, p, v, true, file, line);
}
template <typename T>
inline void st_shared_if(bool pred, T* p, const T& v, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  ::repsr_emu::store(::repsr_emu::Access::kSharedStore, p, v, pred, file, line);
}
template <typename T>
inline void st_global(T* p, const T& v, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  ::repsr_emu::store(::repsr_emu::Access::kGlobalStore, p, v, true, file, line);
}
template <typename T>
inline void st_global_if(bool pred, T* p, const T& v, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  ::repsr_emu::store(::repsr_emu::Access::kGlobalStore, p, v, pred, file, line);
}
// __ldg(p) when pred, else `otherwise` (p is not touched).
template <typename T>
inline T ld_global_if(bool pred, const T* p, T otherwise, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return ::repsr_emu::load(::repsr_emu::Access::kGlobalLoad, p, pred, otherwise, file, line);
}

}  // namespace cuda
}  // namespace repsr

#else  // nvcc

#define REPSR_LAUNCH(kernel, name, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define REPSR_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

namespace repsr {
namespace cuda {

template <typename T>
__device__ __forceinline__ T ld_shared(const T* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ T ld_shared_if(bool pred, const T* p, T otherwise) {
  return pred ? *p : otherwise;
}
template <typename T>
__device__ __forceinline__ void st_shared(T* p, const T& v) {
  *p = v;
}
template <typename T>
__device__ __forceinline__ void st_shared_if(bool pred, T* p, const T& v) {
  if (pred) *p = v;
}
template <typename T>
__device__ __forceinline__ void st_global(T* p, const T& v) {
  *p = v;
}
template <typename T>
__device__ __forceinline__ void st_global_if(bool pred, T* p, const T& v) {
  if (pred) *p = v;
}
template <typename T>
__device__ __forceinline__ T ld_global_if(bool pred, const T* p, T otherwise) {
  return pred ? __ldg(p) : otherwise;
}

}  // namespace cuda
}  // namespace repsr

#endif
