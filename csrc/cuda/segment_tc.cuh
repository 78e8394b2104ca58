// The tensor-core segment kernel (float16 / bfloat16 activations, float32 accumulation), included
// by segment_tc_f16.cu and segment_tc_bf16.cu, one instantiation each. Same block structure as the
// float32 kernel (segment_fp32.cu): load the tile with its halo, run the segment's layers between
// two shared-memory planes, write the boundary map or the pixel-shuffled output.
//
// Each layer is an implicit GEMM: M = output-plane pixels (slots of tc_order_pixel), N = output
// channels padded to 16, K = 9 taps x input channels padded to 16 (k = tap * cin_p + ci). Planes
// store a pixel's channels contiguously (stride tc_pixel_stride), so the 16 A rows of an m16 x k16
// step are 16 pixels' 16-channel slices, one ldmatrix.x4 away: a tap's shift is an address offset.
// B (weights) comes pre-packed in fragment order from global memory (L1-resident: all warps of
// all blocks read the same few KB per step), prefetched one k-step ahead in registers.
#pragma once

#include "device_utils.cuh"

namespace repsr {
namespace cuda {
namespace tc {

// Plane 0 from the image (any dtype/strides; one thread per pixel slot of tc_order_pixel, 8
// channels per 16-byte store, zero in the channel padding and outside the image).
template <typename T>
__device__ void load_plane_from_image(const SegmentParams& p, int64_t n, const Plane& pl, int cin,
                                      T* dst) {
  const int slots = tc_order_slots(pl.rows, pl.cols);
  const int cpad = tc_channels(cin);
  for (int slot = threadIdx.x; slot < slots; slot += kThreads) {
    int py, px;
    if (!tc_order_pixel(slot, pl.rows, pl.cols, &py, &px)) continue;
    const int64_t y = pl.y0 + py, x = pl.x0 + px;
    const bool inside = in_image(y, x, p.height, p.width);
    for (int c0 = 0; c0 < cpad; c0 += 8) {
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = load_image_if(inside && c0 + e < cin, p.image, n, c0 + e, y, x);
      const uint4 packed = make_uint4(TcType<T>::pack(v[0], v[1]), TcType<T>::pack(v[2], v[3]),
                                      TcType<T>::pack(v[4], v[5]), TcType<T>::pack(v[6], v[7]));
      st_shared(reinterpret_cast<uint4*>(dst + tc_pixel_offset(cin, pl.cols, py, px) + c0), packed);
    }
  }
}

// Work item i of a plane <-> map copy (tiling.cuh, tc_chunk_item) of a plane of `c` channels: its
// pixel's element offset in the plane (a stand-in pixel for an idle slot: `real` false), chunk, image
// position and whether that is in the image.
struct ChunkItem {
  int offset, chunk;
  int64_t y, x;
  bool real, inside;
};

__device__ __forceinline__ ChunkItem chunk_item(const SegmentParams& p, const Plane& pl, int c, int i,
                                                int chunks) {
  ChunkItem it;
  int slot, py, px;
  tc_chunk_item(i, chunks, &slot, &it.chunk);
  it.real = tc_order_pixel(slot, pl.rows, pl.cols, &py, &px);
  it.offset = tc_pixel_offset(c, pl.cols, py, px);
  it.y = pl.y0 + py;
  it.x = pl.x0 + px;
  it.inside = it.real && in_image(it.y, it.x, p.height, p.width);
  return it;
}

// Plane 0 from the previous segment's NHWC map (tc_channels(cin) channels per pixel, already zero
// in the padding): 16-byte chunks in tc_chunk_item order (conflict-free, whole sectors).
template <typename T>
__device__ void load_plane_from_map(const SegmentParams& p, int64_t n, const Plane& pl, int cin,
                                    T* dst) {
  const int cpad = tc_channels(cin);
  const int chunks = cpad / 8;
  const T* map = static_cast<const T*>(p.map_in);
  const int items = static_cast<int>(tc_chunk_items(pl.rows, pl.cols, chunks));
  for (int i = threadIdx.x; i < items; i += kThreads) {
    const ChunkItem it = chunk_item(p, pl, cin, i, chunks);
    const int chunk = it.chunk;
    const int64_t y = it.y, x = it.x;
    const bool real = it.real, inside = it.inside;
    const uint4* src =
        reinterpret_cast<const uint4*>(map + (inside ? tc_map_offset(n, y, x, p.height, p.width, cpad) : 0)) + chunk;
    st_shared_if(real, reinterpret_cast<uint4*>(dst + it.offset + chunk * 8),
                 ld_global_if(inside, src, make_uint4(0, 0, 0, 0)));
  }
}

// The segment's output plane (exactly the tile) to the boundary map, in-image pixels only.
template <typename T>
__device__ void store_plane_to_map(const SegmentParams& p, int64_t n, const Plane& pl, int cout,
                                   const T* src) {
  const int cpad = tc_channels(cout);
  const int chunks = cpad / 8;
  T* map = static_cast<T*>(p.map_out);
  const int items = static_cast<int>(tc_chunk_items(pl.rows, pl.cols, chunks));
  for (int i = threadIdx.x; i < items; i += kThreads) {
    const ChunkItem it = chunk_item(p, pl, cout, i, chunks);
    const int chunk = it.chunk;
    const int64_t y = it.y, x = it.x;
    const bool inside = it.inside;
    uint4* dst = reinterpret_cast<uint4*>(map + (inside ? tc_map_offset(n, y, x, p.height, p.width, cpad) : 0)) + chunk;
    st_global_if(inside, dst, ld_shared(reinterpret_cast<const uint4*>(src + it.offset + chunk * 8)));
  }
}

// One conv layer, plane pin -> plane pout (or, for the tail, -> the output staging in `out`). NT = n8 tiles per
// warp unit (tc_warp_ntiles(cout)); a unit is kTcWarpPixels pixels x 8 * NT channels, and warps
// take units round-robin (consecutive warps share a channel block, so they read the same weights).
template <typename T, int NT>
__device__ void conv_layer(const SegmentParams& p, const LayerDev& layer, int64_t n, const T* in,
                           const Plane& pin, T* out, const Plane& pout, bool tail) {
  constexpr int MT = kTcWarpMTiles;
  static_assert(NT % 2 == 0, "B tiles are loaded in pairs");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int cin_p = tc_channels(layer.cin);
  const int in_stride = tc_pixel_stride(layer.cin), in_pitch = tc_row_pitch(layer.cin, pin.cols);
  const int out_cpad = tc_channels(layer.cout);
  const int m_blocks = static_cast<int>(ceil_div(tc_order_slots(pout.rows, pout.cols, tail), kTcWarpPixels));
  const int pairs = tc_cout_alloc(layer.cout) / 16;  // n8 tile pairs in the packed weights
  const int n_blocks = 2 * pairs / NT;
  const int k_steps = 9 * cin_p / 16;
  const int c_steps = cin_p / 16;  // k16 steps per tap
  const uint32_t in_base = smem_address(in);
  const uint4* weight = static_cast<const uint4*>(layer.weight);
  const int64_t kc_stride = int64_t{pairs} * 32;  // uint4s per k16 step
  // The output plane's order (rows, cols < 2^12: a 4096-pixel row alone would overflow shared
  // memory; rows-only flag) in one register: the epilogue needs it after the k loop, and the
  // <= 4-tile variant sits at its 128-register cap.
  const uint32_t order = static_cast<uint32_t>(pout.rows) | static_cast<uint32_t>(pout.cols) << 12 |
                         static_cast<uint32_t>(tail) << 24;

  for (int unit = warp; unit < m_blocks * n_blocks; unit += kWarps) {
    const int mb = unit % m_blocks, nb = unit / m_blocks;

    // This lane's ldmatrix row: output pixel (py, px) of slot m; its tap-(0,0) input pixel is
    // (py, px) of the input plane (one pixel of halo on each side). An idle slot reads its stand-in
    // pixel (valid reads, results dropped in the epilogue).
    uint32_t a_addr[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      int py, px;
      tc_order_pixel(mb * kTcWarpPixels + mt * 16 + tc_a_row(lane), pout.rows, pout.cols, &py, &px, tail);
      a_addr[mt] = in_base + static_cast<uint32_t>((py * in_pitch + px * in_stride + tc_a_col(lane)) *
                                                   static_cast<int>(sizeof(T)));
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;

    const uint4* wp = weight + tc_b_offset(0, nb * NT / 2, lane, pairs) / 8;
    uint4 b[NT / 2];
#pragma unroll
    for (int q = 0; q < NT / 2; ++q) b[q] = __ldg(wp + q * 32);

    int tap = 0, cc = 0;
    uint32_t tap_offset = 0;  // bytes from tap (0,0) to tap (ky,kx) in the input plane
    for (int kc = 0; kc < k_steps; ++kc) {
      // Prefetch the next step's B (the last step re-reads its own: no branch, no overrun).
      const uint4* wn = wp + (kc + 1 < k_steps ? kc + 1 : kc) * kc_stride;
      uint4 b_next[NT / 2];
#pragma unroll
      for (int q = 0; q < NT / 2; ++q) b_next[q] = __ldg(wn + q * 32);

      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(a[mt], a_addr[mt] + tap_offset + static_cast<uint32_t>(cc * 16 * sizeof(T)));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int q = 0; q < NT / 2; ++q) {
          mma_16816<T>(acc[mt][2 * q], a[mt], b[q].x, b[q].y);
          mma_16816<T>(acc[mt][2 * q + 1], a[mt], b[q].z, b[q].w);
        }
#pragma unroll
      for (int q = 0; q < NT / 2; ++q) b[q] = b_next[q];

      if (++cc == c_steps) {
        cc = 0;
        ++tap;
        tap_offset = static_cast<uint32_t>(((tap / 3) * in_pitch + (tap % 3) * in_stride) *
                                           static_cast<int>(sizeof(T)));
      }
    }

    // Epilogue: bias, activation, then either the next plane or the tail output. Predicated, not
    // branched: idle slots (past the plane's end, idle rows) store nothing, nor do tail pixels beyond
    // the image. In the next plane, pixels outside the image are 0 (the next layer's padding) and
    // so are padded channels (literal zeros: an Inf in a real channel must not become NaN there).
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // accumulator rows lane/4 and lane/4 + 8
        int py, px;
        const bool valid = tc_order_pixel(mb * kTcWarpPixels + mt * 16 + tc_acc_row(lane, 2 * h), order & 0xfff,
                                          order >> 12 & 0xfff, &py, &px, order >> 24 != 0);
        const int64_t iy = pout.y0 + py, ix = pout.x0 + px;
        const bool inside = in_image(iy, ix, p.height, p.width);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int co = (nb * NT + nt) * 8 + tc_acc_col(lane, 0);  // even; co + 1 is the pair
          const float2 bias = __ldg(reinterpret_cast<const float2*>(layer.bias + co));
          float v0 = activate(acc[mt][nt][2 * h] + bias.x, layer.slope, co);
          float v1 = activate(acc[mt][nt][2 * h + 1] + bias.y, layer.slope, co + 1);
          if (order >> 24 != 0) {  // tail: `out` is the staging; its layout is derived here, not kept live
            const TailTarget staging = tail_target(p, out);
            tail_stage_if(valid && inside && co < layer.cout, p, staging, n, iy, ix, py, px, co, v0);
            tail_stage_if(valid && inside && co + 1 < layer.cout, p, staging, n, iy, ix, py, px, co + 1, v1);
          } else if (co < out_cpad) {  // the same for every lane of the n8 tile
            if (!inside || co >= layer.cout) v0 = 0.0f;
            if (!inside || co + 1 >= layer.cout) v1 = 0.0f;
            st_shared_if(valid, reinterpret_cast<uint32_t*>(
                                    out + (valid ? tc_pixel_offset(layer.cout, pout.cols, py, px) + co : 0)),
                         TcType<T>::pack(v0, v1));
          }
        }
      }
    }
  }
}

// kMaxNT bounds the layers' n8 tiles per warp unit (tc_warp_ntiles): the <= 4 variant (segments
// of layers with <= 32 output channels) fits 128 registers, so two blocks share an SM; the 8
// variant needs ~160 registers (64 accumulators + prefetched B), one block per SM.
template <typename T, int kMaxNT>
__global__ void __launch_bounds__(kThreads, tc_blocks_per_sm_by_registers(kMaxNT))
    segment_tc_kernel(const __grid_constant__ SegmentParams p) {
  REPSR_DYNAMIC_SMEM(smem);
  // Ping-pong buffers, picked with a select (an indexed local array would live on the stack).
  T* const buf0 = reinterpret_cast<T*>(smem + p.buf_offset[0]);
  T* const buf1 = reinterpret_cast<T*>(smem + p.buf_offset[1]);
  const TileCoord tile = decode_block(blockIdx.x, p.grid);
  const int k = p.num_layers;
  const int th = p.grid.th, tw = p.grid.tw;

  const Plane p0 = segment_plane(k, 0, th, tw, tile.y0, tile.x0);
  if (p.from_image)
    load_plane_from_image<T>(p, tile.n, p0, p.layers[0].cin, buf0);
  else
    load_plane_from_map<T>(p, tile.n, p0, p.layers[0].cin, buf0);
  __syncthreads();

  for (int j = 0; j < k; ++j) {
    const LayerDev& layer = p.layers[j];
    const Plane pin = segment_plane(k, j, th, tw, tile.y0, tile.x0);
    const Plane pout = segment_plane(k, j + 1, th, tw, tile.y0, tile.x0);
    const bool tail = p.is_tail && j == k - 1;
    const bool odd = j % 2 != 0;
    const T* in = odd ? buf1 : buf0;
    T* out = odd ? buf0 : buf1;
    const int nt = tc_warp_ntiles(layer.cout);
    if (nt == 2) {
      conv_layer<T, 2>(p, layer, tile.n, in, pin, out, pout, tail);
    } else if constexpr (kMaxNT <= 4) {
      conv_layer<T, 4>(p, layer, tile.n, in, pin, out, pout, tail);
    } else {
      if (nt == 4)
        conv_layer<T, 4>(p, layer, tile.n, in, pin, out, pout, tail);
      else if (nt == 6)
        conv_layer<T, 6>(p, layer, tile.n, in, pin, out, pout, tail);
      else
        conv_layer<T, 8>(p, layer, tile.n, in, pin, out, pout, tail);
    }
    __syncthreads();  // plane j + 1 complete before anyone reads it; plane j free for reuse
  }
  T* const last = k % 2 != 0 ? buf1 : buf0;  // plane k, or the tail's staging
  if (p.is_tail)
    write_tail_stage(p, tail_target(p, last), tile);
  else
    store_plane_to_map<T>(p, tile.n, segment_plane(k, k, th, tw, tile.y0, tile.x0), p.layers[k - 1].cout, last);
}

// Launches the narrow variant when every layer of the segment fits it.
// `names`: the narrow and the wide variant's names (error messages, emulator reports).
template <typename T>
const char* launch_segment_tc(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                              cudaStream_t stream, const char* const (&names)[2],
                              const char* attr_error, const char* launch_error) {
  static std::atomic<int> arch_verdict[kMaxDevices];  // both variants come from one compilation
  if (const char* problem = check_kernel_arch(segment_tc_kernel<T, 4>, 80, arch_verdict)) return problem;
  int max_nt = 0;
  for (int j = 0; j < p.num_layers; ++j) max_nt = std::max(max_nt, tc_warp_ntiles(p.layers[j].cout));
  if (max_nt <= 4)
    return launch_segment_kernel(segment_tc_kernel<T, 4>, names[0], p, smem_bytes, smem_limit,
                                 stream, attr_error, launch_error);
  return launch_segment_kernel(segment_tc_kernel<T, 8>, names[1], p, smem_bytes, smem_limit, stream,
                               attr_error, launch_error);
}

}  // namespace tc
}  // namespace cuda
}  // namespace repsr
