// The float32 segment kernel (CUDA cores). One block = one output tile of one image: it loads the
// tile's input with a halo of one pixel per layer of the segment into shared memory, runs the
// segment's layers plane to plane in shared memory, and writes either the boundary map (NCHW fp32)
// or, for the tail, the pixel-shuffled output. Planes are planar: [c][rows][pitch] floats
// (f32_plane_layout: rows and channel groups padded so that a warp's accesses hit 32 banks).
#include "device_utils.cuh"

namespace repsr {
namespace cuda {
namespace {

// Plane 0 from the image (any dtype and strides) or from the previous segment's map; zero outside
// the image (layer 0's padding). In storage order, row padding included (written as zeros, never
// read), so a warp's stores are 32 consecutive words; a warp reads along an image row. Plane 0 is
// read by a conv, so its channels are uniformly strided (F32PlaneLayout): index i is its offset.
__device__ void f32_load_plane(const SegmentParams& p, int64_t n, const Plane& pl, const F32PlaneLayout& l,
                               int channels, float* dst) {
  const float* map = static_cast<const float*>(p.map_in);
  for (int i = threadIdx.x; i < channels * l.channel_stride; i += kThreads) {
    const int c = i / l.channel_stride, pix = i - c * l.channel_stride;
    const int py = pix / l.pitch, px = pix - py * l.pitch;
    const int64_t y = pl.y0 + py, x = pl.x0 + px;
    const bool inside = px < pl.cols && in_image(y, x, p.height, p.width);
    const float v =
        p.from_image
            ? load_image_if(inside, p.image, n, c, y, x)
            : ld_global_if(inside, map + (inside ? f32_map_offset(n, c, y, x, p.height, p.width, channels) : 0),
                           0.0f);
    st_shared(dst + i, v);
  }
}

// The segment's output plane (exactly the tile) to the boundary map, in-image pixels only. In
// storage order (channel by channel: the group skew's gaps are skipped): a lane on row padding
// reads its row's last pixel (a word its neighbour reads too: one broadcast, no extra wavefront)
// and stores nothing.
__device__ void f32_store_map(const SegmentParams& p, int64_t n, const Plane& pl, const F32PlaneLayout& l,
                              int channels, const float* src) {
  float* map = static_cast<float*>(p.map_out);
  for (int i = threadIdx.x; i < channels * l.channel_stride; i += kThreads) {
    const int c = i / l.channel_stride, pix = i - c * l.channel_stride;
    const int py = pix / l.pitch, px = pix - py * l.pitch;
    const int64_t y = pl.y0 + py, x = pl.x0 + px;
    const bool inside = px < pl.cols && in_image(y, x, p.height, p.width);
    const float v = ld_shared(src + l.offset(c) + py * l.pitch + imin(px, pl.cols - 1));
    st_global_if(inside, map + (inside ? f32_map_offset(n, c, y, x, p.height, p.width, channels) : 0), v);
  }
}

// The tail plane (tail channels x the tile, bias added; layout f32_plane_layout(k, k, .., scale))
// to the output in the output's memory order: pixel shuffle, residual, clamp and conversion per
// element, 16-byte chunks per thread where the output's rows allow it (write_tail_rows).
template <typename E>
__device__ void f32_write_tail_as(const SegmentParams& p, const TileCoord& tile, const F32PlaneLayout& l,
                                  const float* plane) {
  const int r = p.scale, out_c = static_cast<int>(p.out.c);
  const TailRows rows = tail_rows(p, tile, static_cast<int>(sizeof(E)));
  const auto element_at = [&](bool pred, int c, int oy, int ox) -> uint32_t {
    const int y = oy / r, x = ox / r;
    const int co = (c * r + (oy - y * r)) * r + (ox - x * r);
    float v = ld_shared_if(pred, plane + l.offset(co) + y * l.pitch + x, 0.0f);
    if (p.residual) v += load_image_if(pred, p.image, tile.n, c, tile.y0 + y, tile.x0 + x);
    if (p.clamp) v = fminf(fmaxf(v, 0.0f), 1.0f);
    return output_bits(p.out.dtype, v);
  };
  const auto chunk_at = [&](bool pred, int c, int oy, int ox) {
    return gather_chunk<E>(pred, rows, out_c, c, oy, ox, element_at);
  };
  write_tail_rows<E>(p, tile, rows, element_at, chunk_at);
}

__device__ void f32_write_tail(const SegmentParams& p, const TileCoord& tile, const F32PlaneLayout& l,
                               const float* plane) {
  with_element_type(dtype_bytes(p.out.dtype), [&](auto e) { f32_write_tail_as<decltype(e)>(p, tile, l, plane); });
}

// Layer j of the segment: one 3x3 conv + bias + activation from plane j (`in`) to plane j + 1
// (`out`), the ping-pong buffers by parity. Thread item: kF32Rows
// consecutive output rows of one column x kF32Couts output channels, so each input value loaded
// from shared memory feeds up to 3 x kF32Rows x kF32Couts FMAs and the 8 weights of a tap are two
// float4 loads that the warp shares (items of a warp mostly have the same channel group).
// Neighbouring threads take neighbouring columns: conflict-free shared-memory access.
// Results go to `out` (plane pout's layout), zero outside the image; the tail's plane too (its
// values with bias, unshuffled), which f32_write_tail then shuffles out. Not inlined, with the
// tail's epilogue the same as every layer's: the hot loop sits at the 128-register cap and gets
// its own register allocation (ctest check_cuda_spills keeps it spill-free).
__device__ __noinline__ void f32_conv_layer(const SegmentParams& p, int j, float* buf0, float* buf1) {
  // Everything derived from the block index and p, so the kernel keeps nothing live across the
  // call (a separate register allocation for the hot loop: it sits at the 128-register cap).
  const TileCoord tile = decode_block(blockIdx.x, p.grid);
  const int k = p.num_layers;
  const Plane pin = segment_plane(k, j, p.grid.th, p.grid.tw, tile.y0, tile.x0);
  const Plane pout = segment_plane(k, j + 1, p.grid.th, p.grid.tw, tile.y0, tile.x0);
  const bool tail = p.is_tail && j == k - 1;
  const float* in = j % 2 != 0 ? buf1 : buf0;
  float* out = j % 2 != 0 ? buf0 : buf1;
  const LayerDev& layer = p.layers[j];
  const int cin = layer.cin, cout = layer.cout;
  const int calloc = f32_cout_alloc(cout);
  const int row_groups = static_cast<int>(ceil_div(pout.rows, kF32Rows));
  const int items = static_cast<int>(f32_items(cout, pout.rows, pout.cols));
  const int item_cols = f32_item_cols(pout.cols);  // >= pout.cols: padding columns store nothing
  const int in_pitch = layer.f32_in.pitch, in_cs = layer.f32_in.channel_stride;
  const float* weight = static_cast<const float*>(layer.weight);

  const int y_in_lo = static_cast<int>(-pout.y0), y_in_hi = static_cast<int>(p.height - pout.y0);
  for (int item = threadIdx.x; item < items; item += kThreads) {
    const int x = item % item_cols;
    const int rest = item / item_cols;
    const int y0 = (rest % row_groups) * kF32Rows;
    const int co0 = (rest / row_groups) * kF32Couts;

    // Input rows y0 .. y0 + kF32Rows + 1 (3 taps below each output row). Rows past the plane
    // (last, partial row group) are clamped to its last row: valid addresses, results dropped.
    // Offsets grow with the row, so clamping the offset clamps the row (one register for the
    // bound instead of an array of kF32Rows + 2 offsets: this kernel sits at its register cap).
    // A padding column reads its row's last column (a word a neighbour reads too: a broadcast).
    const int x_read = imin(x, pout.cols - 1);
    const int row_base = y0 * in_pitch + x_read, row_last = (pin.rows - 1) * in_pitch + x_read;

    float acc[kF32Rows][kF32Couts];
#pragma unroll
    for (int r = 0; r < kF32Rows; ++r)
#pragma unroll
      for (int c = 0; c < kF32Couts; ++c) acc[r][c] = 0.0f;

    for (int ci = 0; ci < cin; ++ci) {
      const float* src = in + ci * in_cs;
      const float* wci = weight + f32_weight_offset(ci, 0, co0, calloc);
#pragma unroll
      for (int kx = 0; kx < 3; ++kx) {
        float v[kF32Rows + 2];
#pragma unroll
        for (int r = 0; r < kF32Rows + 2; ++r) v[r] = ld_shared(src + imin(row_base + r * in_pitch, row_last) + kx);
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
          const float4* wp = reinterpret_cast<const float4*>(wci + (ky * 3 + kx) * calloc);
          const float4 wa = __ldg(wp), wb = __ldg(wp + 1);
          const float w[kF32Couts] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
          for (int r = 0; r < kF32Rows; ++r)
#pragma unroll
            for (int c = 0; c < kF32Couts; ++c) acc[r][c] = fmaf(v[r + ky], w[c], acc[r][c]);
        }
      }
    }

    // Predicated, not branched: padding columns, rows past the plane (partial last row group),
    // channels past cout and, for the tail, pixels beyond the image store nothing. Bias and slope
    // are padded to the allocated channels, so their loads need no predicate.
    // The image's rows as plane rows [y_in_lo, y_in_hi), in 32 bits: fewer registers than
    // 64-bit image coordinates per row (this kernel sits at its register cap).
    const bool col_ok = x < pout.cols;
    const bool col_inside = pout.x0 + x >= 0 && pout.x0 + x < p.width;
    const int out_pitch = layer.f32_out.pitch, out_cs = layer.f32_out.channel_stride;
    float* const out_group = out + co0 / kF32Couts * layer.f32_out.group_stride;  // F32PlaneLayout::offset
#pragma unroll
    for (int r = 0; r < kF32Rows; ++r) {
      const int y = y0 + r;
      const bool row_ok = col_ok && y < pout.rows;
      const bool inside = col_inside && y >= y_in_lo && y < y_in_hi;
#pragma unroll
      for (int c = 0; c < kF32Couts; ++c) {
        const int co = co0 + c;
        const bool ok = row_ok && co < cout;
        const float v = activate(acc[r][c] + __ldg(layer.bias + co), layer.slope, co);
        // Outside the image: the next layer's zero padding (the tail's plane is read only inside).
        const bool padding = !tail && !inside;
        st_shared_if(ok, ok ? out_group + c * out_cs + y * out_pitch + x : out, padding ? 0.0f : v);
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads, 2)
    segment_fp32_kernel(const __grid_constant__ SegmentParams p) {
  REPSR_DYNAMIC_SMEM(smem);
  // Ping-pong buffers, picked with a select (an indexed local array would live on the stack).
  float* const buf0 = reinterpret_cast<float*>(smem + p.buf_offset[0]);
  float* const buf1 = reinterpret_cast<float*>(smem + p.buf_offset[1]);
  {
    const TileCoord tile = decode_block(blockIdx.x, p.grid);
    f32_load_plane(p, tile.n, segment_plane(p.num_layers, 0, p.grid.th, p.grid.tw, tile.y0, tile.x0),
                   p.layers[0].f32_in, p.layers[0].cin, buf0);
  }
  __syncthreads();
  for (int j = 0; j < p.num_layers; ++j) {
    f32_conv_layer(p, j, buf0, buf1);
    __syncthreads();  // plane j + 1 complete before anyone reads it; plane j free for reuse
  }
  const TileCoord tile = decode_block(blockIdx.x, p.grid);
  const int k = p.num_layers;
  const int th = p.grid.th, tw = p.grid.tw;
  float* const last = k % 2 != 0 ? buf1 : buf0;  // plane k
  if (p.is_tail)
    f32_write_tail(p, tile, p.layers[k - 1].f32_out, last);
  else
    f32_store_map(p, tile.n, segment_plane(k, k, th, tw, tile.y0, tile.x0), p.layers[k - 1].f32_out,
                  p.layers[k - 1].cout, last);
}

}  // namespace

const char* launch_segment_fp32(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                                cudaStream_t stream) {
  return launch_segment_kernel(segment_fp32_kernel, "segment_fp32", p, smem_bytes, smem_limit, stream,
                               "cannot set the float32 kernel's shared-memory size",
                               "the float32 segment kernel failed to launch");
}

}  // namespace cuda
}  // namespace repsr
