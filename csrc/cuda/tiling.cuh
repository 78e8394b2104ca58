// Tile arithmetic of the CUDA chain: which pixels a tile needs, shared-memory sizing, the packed
// weight layouts, pixel-shuffle targets, and the cost model that splits a chain into segments.
// Everything here is plain C++ as well as CUDA (REPSR_HD below), so csrc/tests/test_cuda_tiling.cpp
// tests it on a machine without a GPU; the kernels index only through these functions.
// Design notes: csrc/cuda/README.md.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../fused_sr.h"

#if defined(__CUDACC__)
#define REPSR_HD __host__ __device__ __forceinline__
#else
#define REPSR_HD inline
#endif

namespace repsr {
namespace cuda {

// ---- Fixed kernel shape -------------------------------------------------------------------------
constexpr int kThreads = 256;  // threads per block, both kernels
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSegmentLayers = 16;  // layer descriptors a launch carries (halos cap it anyway)
constexpr int64_t kMaxGridBlocks = 0x7fffffff;  // gridDim.x limit

// CUDA-core (float32) path: one thread item = kF32Rows output rows x 1 column x kF32Couts channels.
constexpr int kF32Rows = 4;
constexpr int kF32Couts = 8;

// Tensor-core path: channels padded to kTcChannelAlign (one k16 step of mma.m16n8k16); a pixel's
// channels are contiguous in shared memory, followed by kTcPixelSkew unused elements so that the
// 8 rows an ldmatrix phase reads (8 neighbouring pixels) fall into 8 different 16-byte bank groups
// (the pixel stride is an odd multiple of 16 bytes). A warp work unit is kTcWarpMTiles m16 tiles
// (pixels) x NT n8 tiles (output channels).
constexpr int kTcChannelAlign = 16;
constexpr int kTcPixelSkew = 8;
constexpr int kTcWarpMTiles = 2;
constexpr int kTcWarpPixels = 16 * kTcWarpMTiles;
constexpr int kTcMaxNTiles = 8;  // 64 output channels per warp unit

// Byte alignment of every workspace region and shared-memory buffer.
constexpr int64_t kWorkspaceAlign = 256;
constexpr int64_t kSmemAlign = 128;

enum class Path : int32_t { kFp32 = 0, kTensorCore = 1 };

REPSR_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
REPSR_HD int64_t round_up(int64_t v, int64_t m) { return ceil_div(v, m) * m; }
REPSR_HD int imin(int a, int b) { return a < b ? a : b; }
REPSR_HD int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- Tiles --------------------------------------------------------------------------------------
// A segment launch covers the batch with th x tw output tiles; block b of the 1-D grid is tile
// (n, ty, tx). The block count sits in gridDim.x (limit 2^31 - 1), never y/z (limit 65535).
struct TileGrid {
  int32_t th = 1, tw = 1;
  int64_t n = 0, tiles_y = 0, tiles_x = 0;
};

REPSR_HD TileGrid make_tile_grid(int64_t n, int64_t h, int64_t w, int th, int tw) {
  TileGrid g;
  g.th = th;
  g.tw = tw;
  g.n = n;
  g.tiles_y = ceil_div(h, th);
  g.tiles_x = ceil_div(w, tw);
  return g;
}

REPSR_HD int64_t grid_blocks(const TileGrid& g) { return g.n * g.tiles_y * g.tiles_x; }

struct TileCoord {
  int64_t n, y0, x0;  // batch index and image position of the tile's first output pixel
};

REPSR_HD TileCoord decode_block(int64_t block, const TileGrid& g) {
  const int64_t per_image = g.tiles_y * g.tiles_x;
  TileCoord t;
  t.n = block / per_image;
  const int64_t rest = block - t.n * per_image;
  const int64_t ty = rest / g.tiles_x;
  t.y0 = ty * g.th;
  t.x0 = (rest - ty * g.tiles_x) * g.tw;
  return t;
}

// Plane j of a k-layer segment: the input of the segment's layer j (j = 0: the loaded tile, j = k:
// the segment's output, exactly the tile). Layer j still has k - j layers to feed, so its input
// needs a halo of k - j pixels. Planes are not clipped to the image: pixels outside it are
// computed like any other and then forced to 0, the next layer's zero padding.
struct Plane {
  int32_t rows, cols;
  int64_t y0, x0;  // image position of plane pixel (0, 0); negative at the top/left border
};

REPSR_HD Plane segment_plane(int k, int j, int th, int tw, int64_t tile_y0, int64_t tile_x0) {
  const int halo = k - j;
  Plane p;
  p.rows = th + 2 * halo;
  p.cols = tw + 2 * halo;
  p.y0 = tile_y0 - halo;
  p.x0 = tile_x0 - halo;
  return p;
}

REPSR_HD bool in_image(int64_t y, int64_t x, int64_t h, int64_t w) {
  return y >= 0 && y < h && x >= 0 && x < w;
}

// Element (n, c, y, x) of a strided image, in elements; 64-bit throughout (an 8K x4 output holds
// more than 2^31 elements).
REPSR_HD int64_t image_offset(const ImageRef& im, int64_t n, int64_t c, int64_t y, int64_t x) {
  return n * im.stride_n + c * im.stride_c + y * im.stride_h + x * im.stride_w;
}

// Segment-boundary maps in the workspace. Tensor cores: NHWC with tc_channels(c) channels (zero
// padding included, so the next segment loads whole 16-byte chunks). float32: NCHW.
REPSR_HD int64_t tc_map_offset(int64_t n, int64_t y, int64_t x, int64_t h, int64_t w, int cpad) {
  return ((n * h + y) * w + x) * cpad;
}
REPSR_HD int64_t f32_map_offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t h, int64_t w,
                                int channels) {
  return ((n * channels + c) * h + y) * w + x;
}

// ---- Pixel shuffle ------------------------------------------------------------------------------
// Tail channel co = c * r * r + i * r + j goes to output (c, y * r + i, x * r + j).
struct ShuffleTarget {
  int32_t c, i, j;
};

REPSR_HD ShuffleTarget shuffle_target(int co, int r) {
  ShuffleTarget t;
  const int rr = r * r;
  t.c = co / rr;
  const int ij = co - t.c * rr;
  t.i = ij / r;
  t.j = ij - t.i * r;
  return t;
}

// ---- Channel layouts ----------------------------------------------------------------------------
REPSR_HD int tc_channels(int c) { return static_cast<int>(round_up(c, kTcChannelAlign)); }
REPSR_HD int tc_pixel_stride(int c) { return tc_channels(c) + kTcPixelSkew; }
// Pixel order of a tensor-core plane of rows x cols pixels. Every shared-memory phase of the
// tensor-core path covers 8 pixels x 16 bytes: an ldmatrix matrix (8 A rows), an epilogue store
// (8 accumulator rows), a quarter warp of a plane <-> map copy. Those 8 pixels are 8 consecutive
// slots of this order, and it never lets a group of 8 wrap a row (where a plain row-major order
// would skip the row's end: 2 pixels for a layer reading its input plane, none for one writing
// its output plane, so no single row pitch serves both): the first 8 * (cols / 8) columns run
// row-major, each row in whole groups of 8; the last cols % 8 columns run in vertical groups of 8
// rows (bands of 8 rows; in a band, column by column), the last band's rows past the plane idle.
// With an odd row pitch in 16-byte units (tc_row_pitch) and the odd pixel stride, a horizontal
// group's 8 pixels and a vertical group's 8 rows each fall into 8 different bank groups, at any
// tap offset, for every plane size. Slots past the plane's end (the last warp unit) or in an
// idle row are no pixel.
// The tail layer (`rows_only`) stages 8 pixels of a group r^2 channels apart in output rows that a
// vertical group would stack into the same banks, so it keeps to rows: each row in groups of 8,
// the last one partial (idle slots where cols is not a multiple of 8).
REPSR_HD int tc_order_slots(int rows, int cols, bool rows_only = false) {
  const int rest = cols % 8;
  if (rows_only) return rows * static_cast<int>(round_up(cols, 8));
  return rows * (cols - rest) + rest * static_cast<int>(round_up(rows, 8));
}
// The pixel (py, px) of slot `slot`; false for no pixel, which then names a stand-in: the same
// pixel for every idle slot of a group, one of its real pixels where it has any, so reads there
// cost no extra wavefront.
REPSR_HD bool tc_order_pixel(int slot, int rows, int cols, int* py, int* px, bool rows_only = false) {
  if (rows_only) {
    const int row_slots = static_cast<int>(round_up(cols, 8));
    const int y = slot / row_slots, x = slot - y * row_slots;
    const bool real = y < rows && x < cols;
    *py = y < rows ? y : rows - 1;
    *px = real ? x : cols - 1;
    return real;
  }
  const int rest = cols % 8, body = cols - rest, body_slots = rows * body;
  if (slot < body_slots) {
    *py = slot / body;
    *px = slot - *py * body;
    return true;
  }
  const int s = slot - body_slots, group = s / 8;
  const int band = rest > 0 ? group / rest : rows;
  const int y = band * 8 + s % 8;
  const bool real = y < rows;
  *py = real ? y : rows - 1;
  *px = rest > 0 ? body + group - band * rest : cols - 1;
  return real;
}
// Row pitch, in elements, of a tensor-core plane of `cols` pixels: whole pixels plus one 16-byte
// unit where that makes the pitch an odd number of units (vertical groups of tc_order_pixel: 8
// consecutive rows in 8 different bank groups). The pixel stride is odd in units, so an even
// `cols` gets the unit.
REPSR_HD int tc_row_pitch(int c, int cols) { return cols * tc_pixel_stride(c) + (cols % 2 == 0 ? 8 : 0); }
// Element offset of plane pixel (py, px).
REPSR_HD int tc_pixel_offset(int c, int cols, int py, int px) {
  return py * tc_row_pitch(c, cols) + px * tc_pixel_stride(c);
}
// n8 tiles per warp unit: the whole (padded) cout up to 64 channels (2, 4, 6 or 8 tiles), else
// units of 64 channels.
REPSR_HD int tc_warp_ntiles(int cout) {
  const int cp = tc_channels(cout);
  return cp <= 8 * kTcMaxNTiles ? cp / 8 : kTcMaxNTiles;
}
// Output channels the packed weights hold: a whole number of warp units (zeros beyond cout).
REPSR_HD int tc_cout_alloc(int cout) {
  return static_cast<int>(round_up(tc_channels(cout), 8 * tc_warp_ntiles(cout)));
}
REPSR_HD int f32_cout_alloc(int cout) { return static_cast<int>(round_up(cout, kF32Couts)); }

// Packed tensor-core weights of one layer, as the mma B operand (K = 9 * cin_p, N = cout_alloc,
// k = tap * cin_p + ci with tap = ky * 3 + kx) laid out in fragment order: for each k16 step kc and
// each pair of n8 tiles, 32 lanes x 8 elements (16 bytes: b0 b1 b2 b3 of the even tile, then of
// the odd tile). A warp reads one step of a tile pair as one coalesced 512-byte uint4 load.
// Lane l (g = l / 4, t = l % 4) holds b0, b1 = B(2t, g), B(2t + 1, g) and b2, b3 = B(2t + 8, g),
// B(2t + 9, g) of each n8 tile (PTX ISA, mma.m16n8k16 B fragment).
REPSR_HD int64_t tc_weight_elements(int cin, int cout) {
  return int64_t{9} * tc_channels(cin) * tc_cout_alloc(cout);
}
REPSR_HD int64_t tc_b_offset(int64_t kc, int pair, int lane, int pairs) {
  return ((kc * pairs + pair) * 32 + lane) * 8;
}
// Inverse of the packing: the (k, n) of B that packed element `e` holds.
REPSR_HD void tc_b_source(int64_t e, int cout_alloc, int64_t* k, int* n) {
  const int pairs = cout_alloc / 16;
  const int elem = static_cast<int>(e % 8);
  const int lane = static_cast<int>((e / 8) % 32);
  const int pair = static_cast<int>((e / 256) % pairs);
  const int64_t kc = e / (256 * int64_t{pairs});
  const int tile = pair * 2 + elem / 4;
  const int r = elem % 4;  // b0..b3
  *k = kc * 16 + 2 * (lane % 4) + (r & 1) + (r >= 2 ? 8 : 0);
  *n = tile * 8 + lane / 4;
}
// mma.m16n8k16 accumulator c0..c3 of lane l: row (pixel) l / 4 (+8 for c2, c3), column (channel)
// 2 * (l % 4) (+1 for c1, c3).
REPSR_HD int tc_acc_row(int lane, int r) { return lane / 4 + (r >= 2 ? 8 : 0); }
REPSR_HD int tc_acc_col(int lane, int r) { return 2 * (lane % 4) + (r & 1); }
// ldmatrix.x4 of a 16x16 A tile: lane l gives the address of row l % 16, columns (l / 16) * 8..+7;
// matrices 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
// are exactly a0a1, a2a3, a4a5, a6a7 of the A fragment.
REPSR_HD int tc_a_row(int lane) { return lane % 16; }
REPSR_HD int tc_a_col(int lane) { return (lane / 16) * 8; }

// float32 weights: [ci][ky][kx][f32_cout_alloc], zeros beyond cout, so a thread reads its 8 output
// channels of one tap as two float4 loads that a warp shares (broadcast).
REPSR_HD int64_t f32_weight_elements(int cin, int cout) {
  return int64_t{9} * cin * f32_cout_alloc(cout);
}
REPSR_HD int64_t f32_weight_offset(int ci, int tap, int co, int cout_alloc) {
  return (int64_t{ci} * 9 + tap) * cout_alloc + co;
}

// Blocks per SM the kernels' register budgets allow (__launch_bounds__ minimum blocks): the
// tensor-core kernel comes in a variant for layers of <= 4 n8 tiles per warp unit (<= 32 output
// channels, 128 registers) and one for up to 8 (~160 registers); the float32 kernel fits 128.
REPSR_HD constexpr int tc_blocks_per_sm_by_registers(int max_ntiles) { return max_ntiles <= 4 ? 2 : 1; }
constexpr int kF32BlocksPerSmByRegisters = 2;

// Columns a float32 conv's thread items run over for an output plane `cols` wide. A row pitch can
// make a warp's wrap from one row group to the next conflict-free only where this is a multiple of
// kF32Rows (f32_row_pitch), so planes of 32 columns or more are padded to one (e.g. the 66-column
// middle plane of a two-layer 64-wide tile: 68, 3% more items); the padding items read a clamped
// column and store nothing. Narrower planes keep their width: up to 3 idle columns would cost
// more than the conflicts.
REPSR_HD int f32_item_cols(int cols) {
  return cols >= 32 && cols % kF32Rows != 0 ? static_cast<int>(round_up(cols, kF32Rows)) : cols;
}

// Work of one layer whose output plane is rows x cols, in the units the kernels distribute.
REPSR_HD int64_t f32_items(int cout, int rows, int cols) {
  return ceil_div(cout, kF32Couts) * ceil_div(rows, kF32Rows) * f32_item_cols(cols);
}
REPSR_HD int64_t tc_units(int cout, int rows, int cols, bool tail = false) {
  const int64_t m_blocks = ceil_div(tc_order_slots(rows, cols, tail), kTcWarpPixels);
  return m_blocks * (tc_cout_alloc(cout) / (8 * tc_warp_ntiles(cout)));
}

// float32 planes: [c][rows][pitch] floats, channel c at F32PlaneLayout::offset(c). A conv layer's thread
// items run x-fastest over `item_cols` columns, then over groups of kF32Rows rows, so where a warp
// wraps from the end of one group's row to the start of the next group's (kF32Rows rows down) the
// address advances by kF32Rows * pitch - item_cols + 1: with kF32Rows * pitch = item_cols (mod 32)
// the warp's 32 words stay in 32 different banks. That is possible when item_cols is a multiple of
// 4 and needed unless it is a multiple of 32 (then no warp wraps); otherwise rows keep their width.
REPSR_HD bool f32_items_wrap_fixable(int item_cols) { return item_cols % 32 != 0 && item_cols % kF32Rows == 0; }
REPSR_HD int f32_row_pitch(int cols, int item_cols) {
  if (!f32_items_wrap_fixable(item_cols)) return cols;
  const int want = (item_cols / kF32Rows) % 8;  // pitch mod 8
  return cols + ((want - cols % 8) % 8 + 8) % 8;
}

// Where a float32 conv's warp spans two groups of kF32Couts output channels (items per group not a
// multiple of 32, e.g. the 12x28 tails: 84), the second group's items start over at row 0 of the
// plane, in the same banks as the first group's. The stores are spread by the plane's layout: the
// conv stores channel c of group g at g * group_stride + c * channel_stride, and group_stride =
// items per group (mod 32) puts each lane's word in bank lane + const across the groups of a warp.
// That skew is given to the last plane of a segment only (read by f32_write_tail / f32_store_map):
// a plane a conv reads keeps group_stride = kF32Couts * channel_stride, so its loop steps by one
// channel stride. The loads would need the groups of a warp to read different input channels
// (every group reading the same channel cannot be spread by any layout: each group's items leave
// the same 20 banks doubly used); csrc/cuda/README.md says why that is not done.
struct F32PlaneLayout {
  int pitch = 0;           // floats per row
  int channel_stride = 0;  // floats from channel c to c + 1 of one group of kF32Couts
  int group_stride = 0;    // floats from channel c to c + kF32Couts
  REPSR_HD int offset(int c) const { return (c / kF32Couts) * group_stride + (c % kF32Couts) * channel_stride; }
  REPSR_HD int64_t bytes(int channels) const {
    return channels > 0 ? (int64_t{offset(channels - 1)} + channel_stride) * 4 : 0;
  }
};

// The bank step from one channel group's items to the next of a conv whose output plane is rows x
// cols: its items per group mod 32 (0: its warps never span two groups).
REPSR_HD int f32_group_bank_step(int rows, int cols) {
  return static_cast<int>((ceil_div(rows, kF32Rows) * f32_item_cols(cols)) % 32);
}

// Plane j of a k-layer float32 segment. Its pitch serves the conv that reads it (planes 0..k-1: its
// items run over f32_item_cols(cols - 2) columns) where that conv's warps wrap rows, else the conv
// that writes it (planes 1..k: f32_item_cols(cols)); the map copies run in storage order. So the
// middle plane of a two-layer 32- or 64-wide tile, whose reader never wraps, serves its writer.
// Plane k's group stride is skewed for its writer where the pitch serves that writer (above).
// A tail segment's plane k (`scale` > 0) is read back in the output's order by f32_write_tail:
// 32 consecutive NCHW output elements of a row are ceil(32 / r) tile pixels x r channels
// (co = .. + j, j = ox % r), so a channel stride of ceil(32 / r) mod 32 words puts them in 32
// different banks; the group skew keeps them there where r divides kF32Couts (r channels of one
// group), so x3 tails go without it.
REPSR_HD F32PlaneLayout f32_plane_layout(int k, int j, int th, int tw, int scale = 0) {
  const Plane p = segment_plane(k, j, th, tw, 0, 0);
  F32PlaneLayout l;
  const int reader_cols = j < k ? f32_item_cols(p.cols - 2) : 0, writer_cols = j > 0 ? f32_item_cols(p.cols) : 0;
  l.pitch = j < k && f32_items_wrap_fixable(reader_cols) ? f32_row_pitch(p.cols, reader_cols)
            : j > 0                                       ? f32_row_pitch(p.cols, writer_cols)
                                                          : p.cols;
  l.channel_stride = p.rows * l.pitch;
  if (j == k && scale > 1) {
    const int want = ((32 + scale - 1) / scale) % 32;
    l.channel_stride += ((want - l.channel_stride % 32) % 32 + 32) % 32;
  }
  l.group_stride = kF32Couts * l.channel_stride;
  const bool writer_linear = j > 0 && (kF32Rows * l.pitch - writer_cols) % 32 == 0;
  if (j == k && writer_linear && (scale <= 1 || kF32Couts % scale == 0)) {
    const int want = f32_group_bank_step(p.rows, p.cols);
    if (want != 0) l.group_stride += ((want - l.group_stride % 32) % 32 + 32) % 32;
  }
  return l;
}

// ---- Shared memory ------------------------------------------------------------------------------
// Bytes of a tensor-core plane (channels padded and skewed, rows padded: tc_row_pitch).
REPSR_HD int64_t tc_plane_bytes(int channels, int rows, int cols) {
  return int64_t{rows} * tc_row_pitch(channels, cols) * 2;
}
// Bytes of plane j of a k-layer segment on either path (`scale` > 0: a tail segment's plane k).
REPSR_HD int64_t plane_bytes(Path path, int channels, int k, int j, int th, int tw, int scale = 0) {
  if (path == Path::kFp32) return f32_plane_layout(k, j, th, tw, scale).bytes(channels);
  const Plane p = segment_plane(k, j, th, tw, 0, 0);
  return tc_plane_bytes(channels, p.rows, p.cols);
}

REPSR_HD int dtype_bytes(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kUInt8: return 1;
  }
  return 4;
}

// Plane <-> map copies move 16-byte chunks (8 channels) of pixels. Work item i of
// tc_chunk_items(rows, cols, chunks) is chunk (i / 8) % chunks of slot (i / (8 chunks)) * 8 + i % 8
// of tc_order_pixel: the 8 lanes of a quarter warp (one shared-memory phase for 16-byte accesses)
// take one group of 8 pixels (8 different bank groups), while the whole warp still covers whole
// pixel records of the NHWC map (full sectors).
REPSR_HD int64_t tc_chunk_items(int rows, int cols, int chunks) {
  return int64_t{tc_order_slots(rows, cols)} * chunks;
}
REPSR_HD void tc_chunk_item(int i, int chunks, int* slot, int* chunk) {
  const int group = i / (8 * chunks), rem = i - group * 8 * chunks;
  *chunk = rem / 8;
  *slot = group * 8 + rem % 8;
}

// ---- Tail staging ----------------------------------------------------------------------------
// The tail layer does not store its values to global memory from the accumulators (each lane's
// values would land scale^2 apart, one element per store). It stages the tile's finished output
// (shuffled, residual added, clamped, converted to the output's element type) in shared memory,
// and after a barrier the block writes it out in the output's memory order: consecutive threads
// write consecutive bytes, so a warp's stores fill whole 32-byte sectors (NCHW and NHWC alike).
// The staging is channel-major, [c][th*r][tw*r] with a row pitch and a channel-block pitch chosen
// so that the tensor-core epilogue's fragment stores are free of bank conflicts: one store covers
// 8 pixels x output rows i and i + 1 (x4) or 2 channels (x2); the row pitch is 16 mod 32 words
// (1- and 2-byte elements) or odd (4-byte), the channel pitch 8 or 16 mod 32 words.
// 32-bit offsets: the staging lives in shared memory (< 2^31 bytes for any tile the planner tries),
// and 64-bit arithmetic would cost the float32 kernel, at its register cap, a spill.
struct TailStage {
  int rows = 0;           // staged rows per channel (th * r)
  int channels = 1;       // channel blocks
  int pitch = 0;          // bytes from one staged row to the next
  int channel_pitch = 0;  // bytes from one channel block to the next
  REPSR_HD int64_t bytes() const { return int64_t{channels} * channel_pitch; }
};

REPSR_HD int64_t tail_stage_pitch(int64_t row_bytes, int elem) {
  int64_t words = ceil_div(row_bytes, 4);
  if (elem == 4)
    words |= 1;
  else
    words += ((16 - words % 32) + 32) % 32;
  return words * 4;
}

REPSR_HD int64_t tail_stage_channel_pitch(int64_t block_bytes, int elem) {
  const int64_t target = elem == 4 ? 16 : 8;
  int64_t words = ceil_div(block_bytes, 4);
  words += ((target - words % 32) + 32) % 32;
  return words * 4;
}

REPSR_HD TailStage tail_stage(int th, int tw, int scale, int out_c, int elem) {
  TailStage t;
  t.rows = th * scale;
  t.channels = out_c;
  t.pitch = static_cast<int>(tail_stage_pitch(int64_t{tw} * scale * elem, elem));
  t.channel_pitch = static_cast<int>(tail_stage_channel_pitch(int64_t{t.rows} * t.pitch, elem));
  return t;
}

REPSR_HD int64_t tail_stage_bytes(int th, int tw, int scale, int out_c, int elem) {
  return tail_stage(th, tw, scale, out_c, elem).bytes();
}

// Byte offset in the staging of tail channel `co` at tile pixel (py, px): output element
// (c, py * r + i, px * r + j) of the tile, co = c r^2 + i r + j.
REPSR_HD int tail_stage_offset(const TailStage& t, int scale, int elem, int co, int py, int px) {
  const ShuffleTarget s = shuffle_target(co, scale);
  return s.c * t.channel_pitch + (py * scale + s.i) * t.pitch + (px * scale + s.j) * elem;
}

// Whether an output's elements run channel-fastest (NHWC / channels_last).
REPSR_HD bool is_channels_last(const ImageRef& im) { return im.c > 1 && im.stride_c < im.stride_w; }

// Two ping-pong buffers: layer j reads buffer j % 2 and writes buffer (j + 1) % 2. `widths` holds
// the k + 1 channel counts of planes 0..k. A tail segment's last layer writes no plane k: its
// buffer k % 2 holds the tail staging instead (`scale`, `out_elem`: the output's scale and element
// size; unused otherwise).
struct SmemLayout {
  int64_t offset[2];
  int64_t total;
};

REPSR_HD SmemLayout segment_smem(Path path, const int* widths, int k, bool tail, int th, int tw,
                                 int scale = 1, int out_elem = 4) {
  int64_t size[2] = {0, 0};
  const int last = tail ? k - 1 : k;
  for (int j = 0; j <= last; ++j) {
    const int64_t b = plane_bytes(path, widths[j], k, j, th, tw);
    if (b > size[j % 2]) size[j % 2] = b;
  }
  if (tail) {  // tensor cores: the staged output; float32: the tail's plane (f32_write_tail)
    const int64_t b = path == Path::kFp32 ? plane_bytes(path, widths[k], k, k, th, tw, scale)
                                          : tail_stage_bytes(th, tw, scale, widths[k] / (scale * scale), out_elem);
    if (b > size[k % 2]) size[k % 2] = b;
  }
  SmemLayout s;
  s.offset[0] = 0;
  s.offset[1] = round_up(size[0], kSmemAlign);
  s.total = s.offset[1] + round_up(size[1], kSmemAlign);
  return s;
}

// ---- Cost model (host) --------------------------------------------------------------------------
// What the planner knows of the device. sm_count and the shared-memory limits are queried at run
// time; the rates are benchmarks/gpu_model.py's for the H100 SXM (its datasheet figures times that
// model's efficiency assumptions, which the device run is to measure; only their ratios steer
// the choice, and the H200 differs only in HBM bandwidth).
struct DeviceModel {
  int sm_count = 132;
  int64_t smem_per_block = 227 * 1024;  // opt-in maximum of dynamic shared memory per block
  int64_t smem_per_sm = 228 * 1024;
  double tc_macs_per_sm_s = 989.4e12 / 2 * 0.66 / 132;  // dense fp16 peak x mma.sync's assumed 66%
  double f32_macs_per_sm_s = 66.9e12 / 2 * 0.8 / 132;   // FP32 peak x the FFMA issue rate's 80%
  double bytes_per_s = 3.35e12 * 0.9;                   // HBM3 x 90% achievable
  double smem_wavefronts_per_sm_s = 1.98e9;             // one 128-byte wavefront per clock (boost)
  double launch_s = 3e-6;                               // per segment kernel, back to back
};

// The chain as the planner sees it.
struct ChainShape {
  Path path = Path::kFp32;
  std::vector<int> widths;  // num_layers + 1 channel counts: widths[0] = in, widths[l + 1] = cout of l
  int64_t n = 0, h = 0, w = 0;
  int scale = 1;
  int in_bytes = 4, out_bytes = 4;  // image element sizes
  bool residual = false;
  int num_layers() const { return static_cast<int>(widths.size()) - 1; }
};

inline int compute_bytes(Path path) { return path == Path::kFp32 ? 4 : 2; }
// Channels a boundary map stores per pixel.
inline int map_channels(Path path, int c) { return path == Path::kFp32 ? c : tc_channels(c); }

struct SegmentPlan {
  int first = 0, last = 0;  // layers [first, last)
  int th = 0, tw = 0;
  SmemLayout smem{{0, 0}, 0};
  TileGrid grid;
  double cost = 0;  // seconds, by the model
};

inline SmemLayout segment_smem_of(const ChainShape& s, int first, int last, int th, int tw) {
  const bool tail = last == s.num_layers();
  return segment_smem(s.path, s.widths.data() + first, last - first, tail, th, tw, s.scale, s.out_bytes);
}

inline int64_t segment_smem_bytes(const ChainShape& s, int first, int last, int th, int tw) {
  return segment_smem_of(s, first, last, th, tw).total;
}

// Blocks of layers [first, last) that can be resident on one SM: the kernel variant's register
// budget, and the shared memory.
inline int blocks_per_sm(const DeviceModel& d, const ChainShape& s, int first, int last,
                         int64_t smem) {
  int by_regs = kF32BlocksPerSmByRegisters;
  if (s.path == Path::kTensorCore) {
    int max_nt = 0;
    for (int l = first; l < last; ++l) max_nt = std::max(max_nt, tc_warp_ntiles(s.widths[l + 1]));
    by_regs = tc_blocks_per_sm_by_registers(max_nt);
  }
  const int64_t by_smem = d.smem_per_sm / (smem + 1024);  // the runtime reserves 1 KiB per block
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(by_smem, by_regs)));
}

// Shared-memory wavefronts one block of layers [first, last) issues, assuming no bank conflicts
// (what the kernels are laid out for; the emulator counts the real ones): plane 0's fill, per
// layer the conv's operand reads and the epilogue's stores, and the segment's output copy (map
// or tail staging and read-back). One wavefront = 128 bytes of a warp request.
inline double segment_block_wavefronts(const ChainShape& s, int first, int last, int th, int tw) {
  const int k = last - first;
  const bool tail = last == s.num_layers();
  const Plane p0 = segment_plane(k, 0, th, tw, 0, 0);
  double waves = double(p0.rows) * p0.cols * map_channels(s.path, s.widths[first]) * compute_bytes(s.path) / 128;
  for (int j = 0; j < k; ++j) {
    const int cin = s.widths[first + j], cout = s.widths[first + j + 1];
    const Plane out = segment_plane(k, j + 1, th, tw, 0, 0);
    if (s.path == Path::kFp32) {
      const double warps = double(ceil_div(f32_items(cout, out.rows, out.cols), 32));
      waves += warps * (double(cin) * 3 * (kF32Rows + 2) + kF32Rows * kF32Couts);  // 6 rows x 3 taps; 32 stores
    } else {
      const double units = double(tc_units(cout, out.rows, out.cols, tail && j == k - 1));
      // per unit: 2 m16 tiles x 9 taps x cin_p / 16 k-steps of one ldmatrix.x4 (4 wavefronts);
      // epilogue: 2 m16 tiles x NT n8 tiles x 2 row halves of 32 lanes x 4 bytes
      waves += units * (2.0 * 9 * (tc_channels(cin) / 16) * 4 + 2.0 * tc_warp_ntiles(cout) * 2);
    }
  }
  const int cout = s.widths[last];
  const double tile = double(th) * tw;
  if (tail)
    waves += 2 * tile * cout * (s.path == Path::kFp32 ? 4 : s.out_bytes) / 128;  // staged, read back
  else
    waves += tile * map_channels(s.path, cout) * compute_bytes(s.path) / 128;
  return waves;
}

// Estimated seconds of one segment launch with th x tw tiles:
//   compute  per block: for each layer, its work units (kernel granularity) in rounds over the
//            block's threads, so a plane that leaves warps idle costs its idle time too; halo rings
//            are computed by every tile that needs them. Blocks run in waves over the SMs; a
//            resident block shares its SM with the others.
//   shared   segment_block_wavefronts per block, in the same waves, at one wavefront per clock;
//   memory   the loaded tiles with their halos, the boundary map or the final output written, the
//            residual input read, at HBM bandwidth.
//   launch   a fixed cost per segment.
// A segment takes the largest of compute, shared and memory (resident blocks overlap one's loads
// with another's math) plus the launch: benchmarks/gpu_model.py's model, with analytic counts.
inline double segment_cost(const DeviceModel& d, const ChainShape& s, int first, int last, int th,
                           int tw) {
  const int k = last - first;
  const bool tail = last == s.num_layers();
  const TileGrid g = make_tile_grid(s.n, s.h, s.w, th, tw);
  const int64_t blocks = grid_blocks(g);
  const int64_t smem = segment_smem_bytes(s, first, last, th, tw);

  double block_s = 0;
  for (int j = 0; j < k; ++j) {
    const int cin = s.widths[first + j], cout = s.widths[first + j + 1];
    const Plane out = segment_plane(k, j + 1, th, tw, 0, 0);
    if (s.path == Path::kFp32) {
      const int64_t rounds = ceil_div(f32_items(cout, out.rows, out.cols), kThreads);
      const double macs = double(rounds) * kThreads * kF32Rows * kF32Couts * 9.0 * cin;
      block_s += macs / d.f32_macs_per_sm_s;
    } else {
      const int64_t rounds = ceil_div(tc_units(cout, out.rows, out.cols, tail && j == k - 1), kWarps);
      const double macs =
          double(rounds) * kWarps * kTcWarpPixels * 8.0 * tc_warp_ntiles(cout) * 9.0 * tc_channels(cin);
      block_s += macs / d.tc_macs_per_sm_s;
    }
  }
  const int per_sm = blocks_per_sm(d, s, first, last, smem);
  const int64_t wave = int64_t{d.sm_count} * per_sm;
  // Full waves keep per_sm blocks on every SM; the last partial wave has ceil(rest / SMs) blocks
  // on its busiest SM.
  const double block_slots = double(blocks / wave) * per_sm + double(ceil_div(blocks % wave, d.sm_count));
  const double compute_s = block_slots * block_s;
  const double shared_s = block_slots * segment_block_wavefronts(s, first, last, th, tw) / d.smem_wavefronts_per_sm_s;

  const Plane in = segment_plane(k, 0, th, tw, 0, 0);
  const int cin = s.widths[first];
  const double in_elem_bytes =
      first == 0 ? double(s.in_bytes) * cin : double(compute_bytes(s.path)) * map_channels(s.path, cin);
  double bytes = double(blocks) * in.rows * in.cols * in_elem_bytes;
  const double pixels = double(s.n) * s.h * s.w;
  const int cout = s.widths[last];
  if (tail) {
    bytes += pixels * cout * s.out_bytes;
    if (s.residual) bytes += pixels * (cout / (s.scale * s.scale)) * s.in_bytes;
  } else {
    bytes += pixels * map_channels(s.path, cout) * compute_bytes(s.path);
  }
  const double memory_s = bytes / d.bytes_per_s;
  return std::max(compute_s, std::max(shared_s, memory_s)) + d.launch_s;
}

// Tile sizes tried along an extent: a fixed ladder below it, and the extent itself when small
// (one tile across a small image, no wasted rows).
inline std::vector<int> tile_candidates(int64_t extent) {
  static const int kLadder[] = {1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128};
  std::vector<int> out;
  for (int t : kLadder)
    if (t < extent) out.push_back(t);
  if (extent <= 128) out.push_back(static_cast<int>(extent));
  return out;
}

// The cheapest tile for layers [first, last) as one segment; cost < 0 when no tile fits the
// shared-memory budget.
inline SegmentPlan best_segment(const DeviceModel& d, const ChainShape& s, int first, int last) {
  SegmentPlan best;
  best.first = first;
  best.last = last;
  best.cost = -1;
  const std::vector<int> ths = tile_candidates(s.h), tws = tile_candidates(s.w);
  for (int th : ths) {
    for (int tw : tws) {
      // Keep tiles roughly square (halo cost grows with the perimeter), within 1:4 either way.
      if (tw > 4 * th + 4 || th > 4 * tw + 4) continue;
      const int64_t smem = segment_smem_bytes(s, first, last, th, tw);
      if (smem > d.smem_per_block) continue;
      if (grid_blocks(make_tile_grid(s.n, s.h, s.w, th, tw)) > kMaxGridBlocks) continue;
      const double c = segment_cost(d, s, first, last, th, tw);
      if (best.cost < 0 || c < best.cost) {
        best.cost = c;
        best.th = th;
        best.tw = tw;
      }
    }
  }
  if (best.cost >= 0) {
    best.smem = segment_smem_of(s, first, last, best.th, best.tw);
    best.grid = make_tile_grid(s.n, s.h, s.w, best.th, best.tw);
  }
  return best;
}

struct ChainPlan {
  std::vector<SegmentPlan> segments;
  double cost = 0;
  const char* error = nullptr;  // non-null: no plan (the message says why)
};

// How plan_chain splits: by the cost model (the default), into as few segments as fit (then by
// cost), or one layer per segment. The last two exist to compare fusion strategies on a GPU and
// to run every kernel shape in tests; the launcher reads REPSR_CUDA_PLAN = cost | fewest | layer.
enum class PlanPolicy : int32_t { kCost = 0, kFewestSegments = 1, kOneLayer = 2 };

// Splits the chain into consecutive segments minimizing the summed segment_cost (dynamic
// programming over split points). At equal cost the plan with fewer segments wins.
inline ChainPlan plan_chain(const DeviceModel& d, const ChainShape& s,
                            PlanPolicy policy = PlanPolicy::kCost) {
  ChainPlan plan;
  const int L = s.num_layers();
  if (L < 1 || s.n <= 0 || s.h <= 0 || s.w <= 0) {
    plan.error = "nothing to plan: empty chain or image";
    return plan;
  }
  std::vector<double> best(L + 1, -1.0);
  std::vector<int> count(L + 1, 0), from(L + 1, -1);
  std::vector<SegmentPlan> chosen(L + 1);
  best[0] = 0;
  for (int last = 1; last <= L; ++last) {
    // Longest segment first; a segment that fits no tile only gets worse as it grows, so stop.
    const int longest = policy == PlanPolicy::kOneLayer ? 1 : kMaxSegmentLayers;
    for (int first = last - 1; first >= 0 && last - first <= longest; --first) {
      const SegmentPlan seg = best_segment(d, s, first, last);
      if (seg.cost < 0) break;
      if (best[first] < 0) continue;
      const double total = best[first] + seg.cost;
      const int segs = count[first] + 1;
      const bool cheaper = total < best[last] * (1 - 1e-9);
      const bool as_cheap = total <= best[last] * (1 + 1e-9);
      const bool better =
          best[last] < 0 ||
          (policy == PlanPolicy::kFewestSegments
               ? segs < count[last] || (segs == count[last] && cheaper)
               : cheaper || (as_cheap && segs < count[last]));
      if (better) {
        best[last] = total;
        count[last] = segs;
        from[last] = first;
        chosen[last] = seg;
      }
    }
    if (best[last] < 0) {
      plan.error = "a layer does not fit in shared memory even with a 1x1 tile (too many channels)";
      return plan;
    }
  }
  for (int last = L; last > 0; last = from[last]) plan.segments.push_back(chosen[last]);
  std::reverse(plan.segments.begin(), plan.segments.end());
  plan.cost = best[L];
  return plan;
}

// ---- Workspace ----------------------------------------------------------------------------------
// [per layer: packed weights | bias (fp32, cout_alloc) | neg_slope (fp32, cout_alloc)] then up to
// two segment-boundary maps (segment s reads map (s - 1) % 2 and writes map s % 2), each sized for
// the widest boundary. Every region starts on a kWorkspaceAlign boundary.
struct WorkspaceLayout {
  std::vector<int64_t> weight, bias, slope;  // byte offsets per layer
  int64_t map[2] = {0, 0};
  int64_t map_bytes = 0;  // per map; 0 when the plan has no boundary
  int64_t total = 0;
};

inline int cout_alloc(Path path, int cout) {
  return path == Path::kFp32 ? f32_cout_alloc(cout) : tc_cout_alloc(cout);
}

inline WorkspaceLayout workspace_layout(const ChainShape& s, const ChainPlan& plan) {
  WorkspaceLayout ws;
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t start = at;
    at = round_up(at + bytes, kWorkspaceAlign);
    return start;
  };
  const int L = s.num_layers();
  for (int l = 0; l < L; ++l) {
    const int cin = s.widths[l], cout = s.widths[l + 1];
    const int64_t wbytes = s.path == Path::kFp32 ? f32_weight_elements(cin, cout) * 4
                                                 : tc_weight_elements(cin, cout) * 2;
    ws.weight.push_back(take(wbytes));
    ws.bias.push_back(take(int64_t{4} * cout_alloc(s.path, cout)));
    ws.slope.push_back(take(int64_t{4} * cout_alloc(s.path, cout)));
  }
  const int boundaries = static_cast<int>(plan.segments.size()) - 1;
  for (int b = 0; b < boundaries; ++b) {
    const int c = map_channels(s.path, s.widths[plan.segments[b].last]);
    ws.map_bytes = std::max<int64_t>(ws.map_bytes, s.n * s.h * s.w * c * compute_bytes(s.path));
  }
  if (boundaries >= 1) ws.map[0] = take(ws.map_bytes);
  if (boundaries >= 2) ws.map[1] = take(ws.map_bytes);
  ws.total = at;
  return ws;
}

}  // namespace cuda
}  // namespace repsr
