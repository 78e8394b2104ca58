// What the host side (fused_sr_cuda.cu) passes to one segment launch, and the launchers of the
// per-compute-type kernels (segment_fp32.cu, segment_tc_f16.cu, segment_tc_bf16.cu). Plain C++ +
// the CUDA runtime API: no device code here.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "tiling.cuh"

namespace repsr {
namespace cuda {

// One conv layer as the kernels read it: packed weights / bias / slope in the workspace.
struct LayerDev {
  const void* weight = nullptr;  // f32: [ci][tap][f32_cout_alloc] float; tc: fragment order
  const float* bias = nullptr;   // [cout_alloc], zero beyond cout
  const float* slope = nullptr;  // [cout_alloc]; nullptr: no activation (the tail)
  int32_t cin = 0, cout = 0;
  // float32 planes of this layer (f32_plane_layout), computed on the host: the conv sits at its
  // register cap, and reading them from the parameters costs no registers across its hot loop.
  F32PlaneLayout f32_in{}, f32_out{};
};

// One launch = layers [first, first + num_layers) of the chain over every tile of the batch.
struct SegmentParams {
  ImageRef image;  // the low-resolution input: the first segment's source and the residual
  ImageRef out;    // the final output (used by the tail segment)
  const void* map_in = nullptr;  // boundary map read by a segment that does not start the chain
  void* map_out = nullptr;       // boundary map written by a segment that does not end it
  int64_t height = 0, width = 0;  // low-resolution size (= image.h, image.w)
  TileGrid grid;
  int64_t buf_offset[2] = {0, 0};  // shared-memory ping-pong buffers (bytes), SmemLayout
  int32_t num_layers = 0;
  int32_t from_image = 0;  // 1: plane 0 comes from `image`, else from map_in
  int32_t is_tail = 0;     // 1: the last layer is the tail (pixel shuffle epilogue to `out`)
  int32_t scale = 1;
  int32_t residual = 0;
  int32_t clamp = 0;
  LayerDev layers[kMaxSegmentLayers];
};

// Each launcher raises the kernel's dynamic shared-memory limit to `smem_limit` (the device's
// opt-in maximum: every caller sets the same value, so concurrent host threads cannot undo each
// other's setting), launches grid_blocks(p.grid) blocks of kThreads threads with `smem_bytes` of
// dynamic shared memory on `stream`, and returns nullptr or a static message.
const char* launch_segment_fp32(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                                cudaStream_t stream);
const char* launch_segment_f16(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                               cudaStream_t stream);
const char* launch_segment_bf16(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace repsr
