// Device helpers shared by the segment kernels: image element loads and output element bits for
// every dtype, the tail's epilogue (staging and row writer), and the tensor-core primitives
// (ldmatrix, mma.sync m16n8k16).
// torch builds pass -D__CUDA_NO_HALF_CONVERSIONS__ etc., so every conversion here is explicit.
// Memory goes through device_api.cuh's accessors (the CPU emulator checks each access).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "device_api.cuh"
#include "kernels.cuh"
#include "tiling.cuh"

namespace repsr {
namespace cuda {

// ---- Image elements -----------------------------------------------------------------------------
// Element (n, c, y, x) of `im` as float when `pred` (uint8 means value / 255), else 0 without a
// memory access: the caller's bounds check is the predicate.
__device__ __forceinline__ float load_image_if(bool pred, const ImageRef& im, int64_t n, int64_t c,
                                               int64_t y, int64_t x) {
  const int64_t off = pred ? image_offset(im, n, c, y, x) : 0;
  switch (im.dtype) {
    case DType::kFloat32:
      return ld_global_if(pred, static_cast<const float*>(im.data) + off, 0.0f);
    case DType::kFloat16:
      return __half2float(
          ld_global_if(pred, static_cast<const __half*>(im.data) + off, __float2half_rn(0.0f)));
    case DType::kBFloat16:
      return __bfloat162float(ld_global_if(pred, static_cast<const __nv_bfloat16*>(im.data) + off,
                                           __float2bfloat16_rn(0.0f)));
    case DType::kUInt8:
      // IEEE division (not the --use_fast_math reciprocal), as the CPU chain does.
      return __fdiv_rn(static_cast<float>(ld_global_if(pred, static_cast<const uint8_t*>(im.data) + off,
                                                       uint8_t{0})),
                       255.0f);
  }
  return 0.0f;
}

// The bits of v as an element of `dtype` (zero-extended): uint8 is v clamped to [0, 1], scaled by
// 255 and rounded half-to-even (the CPU chain's rounding).
__device__ __forceinline__ uint32_t output_bits(DType dtype, float v) {
  switch (dtype) {
    case DType::kFloat32:
      return *reinterpret_cast<const uint32_t*>(&v);
    case DType::kFloat16: {
      const __half h = __float2half_rn(v);
      return *reinterpret_cast<const uint16_t*>(&h);
    }
    case DType::kBFloat16: {
      const __nv_bfloat16 h = __float2bfloat16_rn(v);
      return *reinterpret_cast<const uint16_t*>(&h);
    }
    case DType::kUInt8: {
      const float clamped = fminf(fmaxf(v, 0.0f), 1.0f);  // NaN -> 0
      return static_cast<uint32_t>(__float2int_rn(clamped * 255.0f));
    }
  }
  return 0;
}

// Calls f(E{}) with E the unsigned integer type of `elem` bytes (1, 2, else 4): the tail's writers
// move an output element's bits (output_bits) at the output's width.
template <typename F>
__device__ __forceinline__ void with_element_type(int elem, const F& f) {
  if (elem == 1)
    f(uint8_t{});
  else if (elem == 2)
    f(uint16_t{});
  else
    f(uint32_t{});
}

// ---- The tail epilogue (tiling.cuh, "Tail staging") ------------------------------------------------
// Where the block's tail output tile is staged: the shared-memory buffer, its layout, the tile.
struct TailTarget {
  char* stage = nullptr;
  TailStage layout;
  int out_c = 0, elem = 4;
};

__device__ __forceinline__ TailTarget tail_target(const SegmentParams& p, void* stage) {
  TailTarget t;
  t.stage = static_cast<char*>(stage);
  t.out_c = static_cast<int>(p.out.c);
  t.elem = dtype_bytes(p.out.dtype);
  t.layout = tail_stage(p.grid.th, p.grid.tw, p.scale, t.out_c, t.elem);
  return t;
}

// One tail-conv value `v` (bias included) of tail channel `co` at tile pixel (py, px), which is
// image pixel (y, x) of image n: residual, clamp, conversion to the output's element type, into
// the staging. Does nothing unless `pred` (pixel inside the image and co < the tail's cout).
__device__ __forceinline__ void tail_stage_if(bool pred, const SegmentParams& p, const TailTarget& t,
                                              int64_t n, int64_t y, int64_t x, int py, int px, int co,
                                              float v) {
  const ShuffleTarget s = shuffle_target(co, p.scale);
  if (p.residual) v += load_image_if(pred, p.image, n, s.c, y, x);
  if (p.clamp) v = fminf(fmaxf(v, 0.0f), 1.0f);
  const int off = pred ? tail_stage_offset(t.layout, p.scale, t.elem, co, py, px) : 0;
  const uint32_t bits = output_bits(p.out.dtype, v);
  with_element_type(t.elem, [&](auto e) {
    using E = decltype(e);
    st_shared_if(pred, reinterpret_cast<E*>(t.stage + off), static_cast<E>(bits));
  });
}

// Element i, in memory order, of a tile's output of `rows` x (row_len / out_c or row_len)
// elements per channel: (channel, row, column) of the tile. NHWC (`interleaved`): rows of pixels
// with their channels; NCHW: each channel's rows in turn.
__device__ __forceinline__ void output_element(int i, int row_len, int rows, int out_c, bool interleaved, int* c,
                                               int* oy, int* ox) {
  const int row = i / row_len, e = i - row * row_len;
  if (interleaved) {
    *oy = row;
    *ox = e / out_c;
    *c = e - *ox * out_c;
  } else {
    *c = row / rows;
    *oy = row - *c * rows;
    *ox = e;
  }
}

// The rows of a tail tile's output (its in-image part) in the output's memory order: rows of one
// channel (NCHW), or of all channels interleaved (NHWC / channels_last).
struct TailRows {
  int rows = 0;       // output rows per channel
  int row_len = 0;    // elements per row
  int row_count = 0;  // rows in memory order
  bool interleaved = false;
  // 16-byte chunks: a row's elements contiguous and every row of the tile 16-byte aligned.
  bool chunked = false;
};

__device__ __forceinline__ TailRows tail_rows(const SegmentParams& p, const TileCoord& tile, int elem) {
  const ImageRef& o = p.out;
  const int r = p.scale, out_c = static_cast<int>(o.c);
  TailRows t;
  t.rows = static_cast<int>(imin64(p.grid.th, p.height - tile.y0)) * r;
  const int cols = static_cast<int>(imin64(p.grid.tw, p.width - tile.x0)) * r;
  t.interleaved = is_channels_last(o);
  t.row_len = t.interleaved ? cols * out_c : cols;
  t.row_count = t.interleaved ? t.rows : t.rows * out_c;
  const bool contiguous = t.interleaved ? o.stride_c == 1 && o.stride_w == o.c : o.stride_w == 1;
  const uintptr_t first = reinterpret_cast<uintptr_t>(o.data) +
                          static_cast<uintptr_t>(image_offset(o, tile.n, 0, tile.y0 * r, tile.x0 * r) * elem);
  t.chunked = contiguous && first % 16 == 0 && (o.stride_h * elem) % 16 == 0 &&
              (t.interleaved || o.c == 1 || (o.stride_c * elem) % 16 == 0);
  return t;
}

// 16 bytes of consecutive output elements from element (c, oy, ox) of the tile on, each from
// `element_at(pred, c, oy, ox)` (its bits, zero-extended), packed little-endian as memory holds them.
template <typename E, typename ElementAt>
__device__ __forceinline__ uint4 gather_chunk(bool pred, const TailRows& t, int out_c, int c, int oy, int ox,
                                              const ElementAt& element_at) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(E)), kPerWord = 4 / static_cast<int>(sizeof(E));
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    w[q / kPerWord] |= element_at(pred, c, oy, ox) << (8 * static_cast<int>(sizeof(E)) * (q % kPerWord));
    if (!t.interleaved)
      ++ox;
    else if (++c == out_c)
      c = 0, ++ox;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// The tail tile's output rows to global memory, the elements' bits from `element_at(pred, c, oy,
// ox)` and 16-byte chunks from `chunk_at(pred, c, oy, ox)`. Chunked (t.chunked): each thread stores
// one 16-byte chunk of a row with one vector store (a warp: 512 bytes, 16 whole sectors); a row's
// chunks are padded to a multiple of 8 threads, so a quarter warp (one phase of 16-byte shared
// loads) stays inside one row; a row's partial last chunk goes element by element. Otherwise one
// element per thread, consecutive threads on consecutive elements (whole sectors too).
template <typename E, typename ElementAt, typename ChunkAt>
__device__ void write_tail_rows(const SegmentParams& p, const TileCoord& tile, const TailRows& t,
                                const ElementAt& element_at, const ChunkAt& chunk_at) {
  const int out_c = static_cast<int>(p.out.c);
  const int64_t oy0 = tile.y0 * p.scale, ox0 = tile.x0 * p.scale;
  E* const out = static_cast<E*>(p.out.data);
  if (!t.chunked) {
    for (int i = threadIdx.x; i < t.row_count * t.row_len; i += kThreads) {
      int c, oy, ox;
      output_element(i, t.row_len, t.rows, out_c, t.interleaved, &c, &oy, &ox);
      st_global(out + image_offset(p.out, tile.n, c, oy0 + oy, ox0 + ox), static_cast<E>(element_at(true, c, oy, ox)));
    }
    return;
  }
  constexpr int kPer = 16 / static_cast<int>(sizeof(E));
  const int chunks = static_cast<int>(ceil_div(t.row_len, kPer));
  const int slots = static_cast<int>(round_up(chunks, 8));
  for (int i = threadIdx.x; i < t.row_count * slots; i += kThreads) {
    const int row = i / slots, k = i - row * slots;
    const int e0 = imin(k, chunks - 1) * kPer;  // idle slots: their row's last chunk, not accessed
    const int count = k < chunks ? imin(kPer, t.row_len - e0) : 0;
    const bool full = count == kPer;
    int c, oy, ox;
    output_element(row * t.row_len + e0, t.row_len, t.rows, out_c, t.interleaved, &c, &oy, &ox);
    st_global_if(full, reinterpret_cast<uint4*>(out + image_offset(p.out, tile.n, c, oy0 + oy, ox0 + ox)),
                 chunk_at(full, c, oy, ox));
    for (int q = full ? count : 0; q < count; ++q) {  // the row's partial last chunk
      output_element(row * t.row_len + e0 + q, t.row_len, t.rows, out_c, t.interleaved, &c, &oy, &ox);
      st_global(out + image_offset(p.out, tile.n, c, oy0 + oy, ox0 + ox), static_cast<E>(element_at(true, c, oy, ox)));
    }
  }
}

// The staged tile to the output. The staging's rows are 16-byte aligned for 1- and 2-byte elements
// (tail_stage's pitches), so an NCHW chunk is one 16-byte shared load (half the wavefronts of
// element loads). Interleaved (NHWC) output stays one element per thread: a thread's 16 bytes span
// 16 / elem / out_c pixels of every channel block, so a warp's gather reads ~43 words per channel
// and every chunk width (4, 8, 16 bytes) doubles the staging's read wavefronts (csrc/cuda/README.md).
template <typename E>
__device__ void write_tail_staged(const SegmentParams& p, const TailTarget& t, const TileCoord& tile) {
  TailRows rows = tail_rows(p, tile, static_cast<int>(sizeof(E)));
  rows.chunked = rows.chunked && !rows.interleaved && t.layout.pitch % 16 == 0 && t.layout.channel_pitch % 16 == 0;
  const auto staged = [&](int c, int oy, int ox) {
    return t.stage + c * t.layout.channel_pitch + oy * t.layout.pitch + ox * static_cast<int>(sizeof(E));
  };
  const auto element_at = [&](bool pred, int c, int oy, int ox) -> uint32_t {
    return ld_shared_if(pred, reinterpret_cast<const E*>(staged(c, oy, ox)), E{0});
  };
  const auto chunk_at = [&](bool pred, int c, int oy, int ox) -> uint4 {
    return ld_shared_if(pred, reinterpret_cast<const uint4*>(staged(c, oy, ox)), make_uint4(0, 0, 0, 0));
  };
  write_tail_rows<E>(p, tile, rows, element_at, chunk_at);
}

__device__ __forceinline__ void write_tail_stage(const SegmentParams& p, const TailTarget& t,
                                                 const TileCoord& tile) {
  with_element_type(t.elem, [&](auto e) { write_tail_staged<decltype(e)>(p, t, tile); });
}

// The slope array is padded to the allocated channels, so every lane may load it: no divergence.
__device__ __forceinline__ float activate(float v, const float* slope, int co) {
  if (slope == nullptr) return v;
  const float s = __ldg(slope + co);
  return v >= 0.0f ? v : v * s;
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
#elif defined(REPSR_CUDA_EMULATION)
  ::repsr_emu::ldmatrix_x4(r, addr, __FILE__, __LINE__);
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
#elif defined(REPSR_CUDA_EMULATION)
  ::repsr_emu::mma_m16n8k16(d, a, b0, b1, ::repsr_emu::MmaType::kF16, __FILE__, __LINE__);
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
#elif defined(REPSR_CUDA_EMULATION)
  ::repsr_emu::mma_m16n8k16(d, a, b0, b1, ::repsr_emu::MmaType::kBF16, __FILE__, __LINE__);
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

// Once per device and kernel image: the tensor-core kernels need code generated for sm_80 or
// newer. A build with only older images plus PTX (TORCH_CUDA_ARCH_LIST="7.5+PTX") would be
// JIT-compiled here with the __trap() fallbacks of ldmatrix_x4 / mma_16816 and kill the CUDA
// context at the first call; cudaFuncGetAttributes tells which virtual architecture the image the
// device runs was generated from (ptxVersion, 10 * major + minor).
constexpr int kMaxDevices = 64;

template <typename Kernel>
const char* check_kernel_arch(Kernel kernel, int min_arch, std::atomic<int> (&verdict)[kMaxDevices]) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "no current CUDA device";
  }
  std::atomic<int>* known = device >= 0 && device < kMaxDevices ? &verdict[device] : nullptr;
  int v = known ? known->load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return launch_problem(err, "cannot query the tensor-core kernel's attributes");
    }
    v = attr.ptxVersion >= min_arch ? 1 : -1;
    if (known) known->store(v, std::memory_order_relaxed);
  }
  return v > 0 ? nullptr
               : "the tensor-core kernels were built for an architecture below sm_80 only (PTX for "
                 "this GPU would be JIT-compiled without tensor cores): rebuild with this GPU's "
                 "architecture in TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST=9.0";
}

// Sets the dynamic shared-memory limit of `kernel` and launches it over the segment's tiles.
// cudaFuncSetAttribute once per (kernel, device, limit): it is a driver call, and every caller sets
// the same value (the device's opt-in maximum), so a repeat has nothing to change.
template <typename Kernel>
cudaError_t set_max_dynamic_smem_once(Kernel kernel, int limit) {
  // One cache for all kernels of a signature (the template's static is per type, not per kernel).
  static std::mutex mutex;
  static std::vector<std::pair<const void*, std::pair<int, int>>> done;  // kernel, (device, last limit)
  const void* key = reinterpret_cast<const void*>(kernel);
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    device = -1;
  }
  std::lock_guard<std::mutex> lock(mutex);
  // The attribute keeps the last value set, so compare with that (not with any value ever set).
  std::pair<const void*, std::pair<int, int>>* entry = nullptr;
  for (auto& d : done)
    if (d.first == key && d.second.first == device) entry = &d;
  if (entry != nullptr && entry->second.second == limit) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
  if (err != cudaSuccess || device < 0) return err;
  if (entry != nullptr)
    entry->second.second = limit;
  else
    done.emplace_back(key, std::make_pair(device, limit));
  return err;
}

template <typename Kernel>
const char* launch_segment_kernel(Kernel kernel, const char* name, const SegmentParams& p,
                                  int64_t smem_bytes, int64_t smem_limit, cudaStream_t stream,
                                  const char* attr_error, const char* launch_error) {
  const int64_t blocks = grid_blocks(p.grid);
  if (blocks <= 0) return nullptr;
  if (blocks > kMaxGridBlocks) return "too many tiles for one launch (grid limit 2^31 - 1)";
  if (smem_bytes > smem_limit) return "a segment needs more shared memory than the device has";
  cudaError_t err = set_max_dynamic_smem_once(kernel, static_cast<int>(smem_limit));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not a sticky error: clear it so later checks see their own
    return launch_problem(err, attr_error);
  }
  REPSR_LAUNCH(kernel, name, static_cast<unsigned int>(blocks), kThreads,
               static_cast<size_t>(smem_bytes), stream)(p);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : launch_problem(err, launch_error);
}

}  // namespace cuda
}  // namespace repsr
