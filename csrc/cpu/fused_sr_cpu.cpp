// CpuChain: the fused chain on the CPU. One work item = (image, spatial tile). It loads the tile's
// input with a halo of one pixel per layer, runs every layer over tile-local planes that shrink by
// one pixel per side per layer, and writes only the final output: pixel shuffle, residual and
// clamp / uint8 quantization are fused into the tail's epilogue. Design notes: csrc/README.md.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "../fused_sr.h"
#include "conv_row.h"

namespace repsr {
namespace {

constexpr std::size_t kAlignment = 64;  // a cache line, and one AVX-512 vector

// A float array aligned to a cache line, so the kernel's vector loads and stores never split one.
class AlignedFloats {
 public:
  AlignedFloats() = default;
  explicit AlignedFloats(std::size_t count)
      : data_(count == 0 ? nullptr
                         : static_cast<float*>(::operator new[](count * sizeof(float),
                                                                std::align_val_t(kAlignment)))) {}
  float* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(kAlignment)); }
  };
  std::unique_ptr<float, Free> data_;
};

// ---- ISA selection ------------------------------------------------------------------------------

struct Isa {
  const char* name;
  int lanes;  // channels per block in the activation planes (conv_row.h)
  cpu::ConvRowFn conv_row;
};

// The widest kernel this CPU runs, capped by the environment variable REPSR_CPU_MAX_ISA
// (avx512 | avx2 | portable) so tests and benchmarks can exercise every variant on one machine.
Isa select_isa() {
  const char* cap_env = std::getenv("REPSR_CPU_MAX_ISA");
  const std::string cap = cap_env != nullptr ? cap_env : "";
#ifdef REPSR_HAVE_X86_KERNELS
  const bool allow_avx2 = cap != "portable";
  const bool allow_avx512 = allow_avx2 && cap != "avx2";
  if (allow_avx512 && __builtin_cpu_supports("avx512f"))
    return {"avx512", cpu::avx512::kLanes, cpu::avx512::conv_row};
  if (allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2", cpu::avx2::kLanes, cpu::avx2::conv_row};
#endif
  (void)cap;
  return {"portable", cpu::portable::kLanes, cpu::portable::conv_row};
}

int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Packed weights -----------------------------------------------------------------------------

// One layer's parameters, pointing into the chain's single packed buffer.
struct PackedLayer {
  int cin = 0, cout = 0, cout_padded = 0;
  const float* weight = nullptr;     // [ky][kx][ci][cout_padded], zero in the cout padding
  const float* bias = nullptr;       // [cout_padded]
  const float* neg_slope = nullptr;  // [cout_padded]; null without activation
};

// Each array starts on a cache line.
std::size_t line_floats(std::size_t floats) {
  constexpr std::size_t kLine = kAlignment / sizeof(float);
  return (floats + kLine - 1) / kLine * kLine;
}

// Packs every layer into `storage` (one allocation: packing runs on every call, and many small
// allocations cost page faults) and returns the layers' views of it.
std::vector<PackedLayer> pack_layers(const Net& net, int lanes, AlignedFloats& storage) {
  std::vector<PackedLayer> layers(net.num_layers);
  std::size_t total = 0;
  for (int l = 0; l < net.num_layers; ++l) {
    const ConvLayer& layer = net.layers[l];
    const std::size_t cp = round_up(layer.cout, lanes);
    total +=
        line_floats(9 * layer.cin * cp) + line_floats(cp) * (layer.neg_slope != nullptr ? 2 : 1);
  }
  storage = AlignedFloats(total);
  float* next = storage.get();
  auto take = [&next](std::size_t floats) {
    float* array = next;
    next += line_floats(floats);
    return array;
  };
  for (int l = 0; l < net.num_layers; ++l) {
    const ConvLayer& layer = net.layers[l];
    PackedLayer& packed = layers[l];
    packed.cin = layer.cin;
    packed.cout = layer.cout;
    packed.cout_padded = round_up(layer.cout, lanes);
    const int cp = packed.cout_padded;

    // Written in order; the reads of one ci (all cout x 9 taps) stay in L1.
    float* weight = take(static_cast<std::size_t>(9) * layer.cin * cp);
    for (int ci = 0; ci < layer.cin; ++ci)
      for (int tap = 0; tap < 9; ++tap) {
        float* dst = weight + (static_cast<std::size_t>(tap) * layer.cin + ci) * cp;
        for (int co = 0; co < layer.cout; ++co)
          dst[co] = layer.weight[(static_cast<std::size_t>(co) * layer.cin + ci) * 9 + tap];
        std::fill(dst + layer.cout, dst + cp, 0.0f);
      }
    packed.weight = weight;

    float* bias = take(cp);
    std::copy(layer.bias, layer.bias + layer.cout, bias);
    std::fill(bias + layer.cout, bias + cp, 0.0f);
    packed.bias = bias;

    if (layer.neg_slope != nullptr) {
      float* slope = take(cp);
      std::copy(layer.neg_slope, layer.neg_slope + layer.cout, slope);
      std::fill(slope + layer.cout, slope + cp, 1.0f);
      packed.neg_slope = slope;
    }
  }
  return layers;
}

// ---- Tile-local planes --------------------------------------------------------------------------

// A tile-local activation plane in the channel-blocked layout of conv_row.h. Plane pixel (0, 0) is
// image pixel (origin_y, origin_x); pixels outside the image hold zeros (the next layer's padding).
struct Plane {
  float* data = nullptr;
  int rows = 0, cols = 0, blocks = 0, lanes = 0;
  int64_t origin_y = 0, origin_x = 0;

  int64_t block_stride() const { return static_cast<int64_t>(cols) * lanes; }
  int64_t row_stride() const { return block_stride() * blocks; }
  float* pixel(int row, int col, int block) const {
    return data + row * row_stride() + block * block_stride() + static_cast<int64_t>(col) * lanes;
  }
};

int channel_blocks(int channels, int lanes) { return (channels + lanes - 1) / lanes; }

int64_t plane_floats(int64_t rows, int64_t cols, int channels, int lanes) {
  return rows * cols * channel_blocks(channels, lanes) * lanes;
}

// In-image part of a plane: [row_lo, row_hi) x [col_lo, col_hi).
struct InImage {
  int row_lo, row_hi, col_lo, col_hi;
};

InImage in_image_part(const Plane& plane, int64_t height, int64_t width) {
  auto clip = [](int64_t v, int hi) {
    return static_cast<int>(std::min<int64_t>(std::max<int64_t>(v, 0), hi));
  };
  return {clip(-plane.origin_y, plane.rows), clip(height - plane.origin_y, plane.rows),
          clip(-plane.origin_x, plane.cols), clip(width - plane.origin_x, plane.cols)};
}

// ---- Tile size cost model -----------------------------------------------------------------------
//
// Estimated cost, in MACs, of running the whole batch with th x tw tiles:
//   compute  sum over layers of (MACs per pixel) x (pixels computed, halos included). A layer with
//            h layers after it computes an h-pixel ring that the neighbouring tiles compute too;
//            rings are clipped at the image border, where nothing is computed.
//   spill    a layer whose working set (input plane + output plane + weights) exceeds 3/4 of the
//            per-core L2 streams its planes through the next cache level: kSpillMacsPerByte per
//            byte of plane it reads and writes. Measured, this costs little next to the halos
//            (the convs do ~100 MACs per byte moved), hence the small constant.
//   balance  work items run in rounds of `threads`; a last partial round idles cores, so the cost
//            is scaled by ceil(items / threads) * threads / items.
// Candidates are all tile heights ceil(H / k) and widths ceil(W / k): equal tiles, no slivers.
// Tiles whose working set exceeds kMaxWorkingSetBytes are not considered, so scratch memory stays
// bounded on large images (at 64 channels the cap still allows ~350 x 350 tiles, where halos
// cost ~10%; wide nets want big tiles, since their MACs per byte moved are high).
constexpr double kSpillMacsPerByte = 1.0;
constexpr double kL2FitFraction = 0.75;  // the rest of L2 holds the output stream and the stack
constexpr double kMaxWorkingSetBytes = 64.0 * 1024 * 1024;

// Sum over the tiles covering [0, extent) with `tile`-sized pieces of their extents grown by
// `halo` on both sides and clipped to [0, extent).
int64_t covered_with_halo(int64_t extent, int64_t tile, int64_t halo) {
  const int64_t tiles = ceil_div(extent, tile);
  int64_t total = extent;
  for (int64_t t = 1; t < tiles; ++t) {  // leading halos: tile t starts at t * tile
    if (t * tile >= halo) {
      total += halo * (tiles - t);
      break;
    }
    total += t * tile;
  }
  for (int64_t t = tiles - 2; t >= 0; --t) {  // trailing halos: tile t ends at (t + 1) * tile
    const int64_t room = extent - (t + 1) * tile;
    if (room >= halo) {
      total += halo * (t + 1);
      break;
    }
    total += room;
  }
  return total;
}

// Every distinct ceil(extent / k), k = 1..extent, or just `forced` (clipped) when it is > 0.
std::vector<int64_t> tile_candidates(int64_t extent, int forced) {
  if (forced > 0) return {std::min<int64_t>(forced, extent)};
  std::vector<int64_t> sizes;
  for (int64_t k = 1; k <= extent; ++k) {
    const int64_t size = ceil_div(extent, k);
    if (sizes.empty() || size != sizes.back()) sizes.push_back(size);
  }
  return sizes;
}

double l2_cache_bytes() {
  long l2 = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  return l2 > 0 ? static_cast<double>(l2) : 1024.0 * 1024.0;  // 1 MiB where the OS does not say
}

struct TileShape {
  int64_t h = 1, w = 1;
};

TileShape choose_tile(const std::vector<PackedLayer>& layers, int lanes, int64_t batch,
                      int64_t height, int64_t width, int forced_h, int forced_w) {
  const int num_layers = static_cast<int>(layers.size());
  const std::vector<int64_t> heights = tile_candidates(height, forced_h);
  const std::vector<int64_t> widths = tile_candidates(width, forced_w);
  const int64_t threads = std::max(1u, std::thread::hardware_concurrency());
  const double l2 = l2_cache_bytes();

  // rows[i][l]: rows layer l computes over all tile rows for heights[i]; cols likewise.
  auto coverage = [&](const std::vector<int64_t>& sizes, int64_t extent) {
    std::vector<std::vector<int64_t>> covered(sizes.size(), std::vector<int64_t>(num_layers));
    for (std::size_t i = 0; i < sizes.size(); ++i)
      for (int l = 0; l < num_layers; ++l)
        covered[i][l] = covered_with_halo(extent, sizes[i], num_layers - 1 - l);
    return covered;
  };
  const auto rows = coverage(heights, height);
  const auto cols = coverage(widths, width);

  TileShape best, smallest;  // smallest: the fallback when no tile is under the working-set cap
  double best_cost = std::numeric_limits<double>::infinity();
  double smallest_working_set = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < heights.size(); ++i) {
    for (std::size_t j = 0; j < widths.size(); ++j) {
      const int64_t th = heights[i], tw = widths[j];
      double cost = 0.0, max_working_set = 0.0;
      for (int l = 0; l < num_layers; ++l) {
        const PackedLayer& layer = layers[l];
        const int64_t halo = num_layers - 1 - l;
        const double pixels = static_cast<double>(rows[i][l]) * static_cast<double>(cols[j][l]);
        cost += pixels * 9.0 * layer.cin * layer.cout_padded;
        const int64_t out_plane =
            halo > 0 ? plane_floats(th + 2 * halo, tw + 2 * halo, layer.cout, lanes)
                     : tw * layer.cout_padded;  // the tail's staging row
        const double working_set =
            4.0 * (plane_floats(th + 2 * halo + 2, tw + 2 * halo + 2, layer.cin, lanes) +
                   out_plane + 9.0 * layer.cin * layer.cout_padded);
        max_working_set = std::max(max_working_set, working_set);
        if (working_set > kL2FitFraction * l2)
          cost += kSpillMacsPerByte * pixels * 4.0 * lanes *
                  (channel_blocks(layer.cin, lanes) + channel_blocks(layer.cout, lanes));
      }
      if (max_working_set < smallest_working_set) {
        smallest_working_set = max_working_set;
        smallest = {th, tw};
      }
      if (max_working_set > kMaxWorkingSetBytes) continue;
      const int64_t items = batch * ceil_div(height, th) * ceil_div(width, tw);
      cost *= static_cast<double>(ceil_div(items, threads) * threads) / static_cast<double>(items);
      if (cost < best_cost) {
        best_cost = cost;
        best = {th, tw};
      }
    }
  }
  return best_cost < std::numeric_limits<double>::infinity() ? best : smallest;
}

// ---- Tail epilogue helpers
// -----------------------------------------------------------------------

// segment[x * r + j] = tail channel first_channel + j of pixel x, plus residual[x]: one row of
// the pixel-shuffled output. R > 0 is r known at compile time, for channels that lie in one
// block, so the j loop vectorizes; R == 0 handles any r and channels spanning blocks.
template <int R>
void gather_output_row(const float* tail_row, int64_t tail_block_stride, int lanes,
                       int64_t first_channel, int r, int width, const float* residual,
                       float* segment) {
  if constexpr (R > 0) {
    const float* src =
        tail_row + (first_channel / lanes) * tail_block_stride + first_channel % lanes;
    for (int x = 0; x < width; ++x)
      for (int j = 0; j < R; ++j) segment[x * R + j] = src[x * lanes + j] + residual[x];
  } else {
    for (int j = 0; j < r; ++j) {
      const int64_t k = first_channel + j;
      const float* src = tail_row + (k / lanes) * tail_block_stride + k % lanes;
      for (int x = 0; x < width; ++x) segment[x * r + j] = src[x * lanes] + residual[x];
    }
  }
}

template <bool kClamp>
inline float finish_value(float v) {
  return kClamp ? std::min(std::max(v, 0.0f), 1.0f) : v;
}

// clamp(v, 0, 1) * 255 rounded half-to-even (as std::nearbyint in the default rounding mode):
// adding and subtracting 1.5 * 2^23 leaves no fraction bits, and the FPU rounds to even.
inline uint8_t quantize(float v) {
  const float clamped = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;  // NaN -> 0
  constexpr float kRoundingShift = 12582912.0f;                   // 1.5 * 2^23
  return static_cast<uint8_t>((clamped * 255.0f + kRoundingShift) - kRoundingShift);
}

// The unit-stride loops are split out so that they vectorize.
template <bool kClamp>
void store_segment(float* dst, int64_t stride, const float* segment, int64_t count) {
  if (stride == 1) {
    for (int64_t t = 0; t < count; ++t) dst[t] = finish_value<kClamp>(segment[t]);
  } else {
    for (int64_t t = 0; t < count; ++t) dst[t * stride] = finish_value<kClamp>(segment[t]);
  }
}

void store_segment(uint8_t* dst, int64_t stride, const float* segment, int64_t count) {
  if (stride == 1) {
    for (int64_t t = 0; t < count; ++t) dst[t] = quantize(segment[t]);
  } else {
    for (int64_t t = 0; t < count; ++t) dst[t * stride] = quantize(segment[t]);
  }
}

}  // namespace

// ---- CpuChain -----------------------------------------------------------------------------------

struct CpuChain::Impl {
  Net net;
  ImageRef in, out;
  Isa isa{};
  AlignedFloats packed_params;  // every layer's weights, biases and slopes
  std::vector<PackedLayer> layers;
  int64_t tile_h = 1, tile_w = 1, tiles_y = 0, tiles_x = 0;
  int64_t plane_capacity[2] = {0, 0};  // floats in each ping-pong plane buffer

  // Per-call buffers: planes[1] holds the input plane and the odd layers' outputs, planes[0] the
  // even layers' outputs, so a layer never overwrites its own input.
  struct Scratch {
    AlignedFloats planes[2];
    AlignedFloats tail_row;        // one row of tail output, channel-blocked
    AlignedFloats residual_row;    // one row of one input channel, as float
    AlignedFloats output_segment;  // one row of the tile's output, before the dtype conversion
  };

  int num_layers() const { return static_cast<int>(layers.size()); }
  int lanes() const { return isa.lanes; }

  void size_planes();
  void run_tile(int64_t item, const Scratch& scratch) const;
  void load_input(const Plane& plane, int64_t n) const;
  void conv_plane(const PackedLayer& layer, const Plane& src, const Plane& dst) const;
  void conv_row(const PackedLayer& layer, const Plane& src, int src_row, int src_col, float* out,
                int64_t out_block_stride, int width) const;
  void zero_outside(const Plane& plane, int row_lo, int row_hi, int col_lo, int col_hi) const;
  void load_residual_row(int64_t n, int64_t c, int64_t y, int64_t x0, int width, float* dst) const;
  template <typename OutT>
  void write_output_row(const float* tail_row, int64_t tail_block_stride, int64_t n, int64_t y,
                        int64_t x0, int width, const Scratch& scratch) const;
};

void CpuChain::Impl::size_planes() {
  const int num = num_layers();
  plane_capacity[1] = plane_floats(tile_h + 2 * num, tile_w + 2 * num, layers[0].cin, lanes());
  for (int l = 0; l + 1 < num; ++l) {
    const int64_t halo = num - 1 - l;
    plane_capacity[l % 2] =
        std::max(plane_capacity[l % 2],
                 plane_floats(tile_h + 2 * halo, tile_w + 2 * halo, layers[l].cout, lanes()));
  }
}

void CpuChain::Impl::zero_outside(const Plane& plane, int row_lo, int row_hi, int col_lo,
                                  int col_hi) const {
  if (row_lo == 0 && row_hi == plane.rows && col_lo == 0 && col_hi == plane.cols) return;
  for (int r = 0; r < plane.rows; ++r) {
    if (r < row_lo || r >= row_hi) {
      std::memset(plane.pixel(r, 0, 0), 0, sizeof(float) * plane.row_stride());
      continue;
    }
    for (int b = 0; b < plane.blocks; ++b) {
      std::memset(plane.pixel(r, 0, b), 0, sizeof(float) * col_lo * plane.lanes);
      std::memset(plane.pixel(r, col_hi, b), 0,
                  sizeof(float) * (plane.cols - col_hi) * plane.lanes);
    }
  }
}

void CpuChain::Impl::load_input(const Plane& plane, int64_t n) const {
  const InImage part = in_image_part(plane, in.h, in.w);
  zero_outside(plane, part.row_lo, part.row_hi, part.col_lo, part.col_hi);
  const int width = part.col_hi - part.col_lo;
  for (int r = part.row_lo; r < part.row_hi; ++r) {
    const int64_t y = plane.origin_y + r;
    for (int c = 0; c < in.c; ++c) {
      float* dst = plane.pixel(r, part.col_lo, c / plane.lanes) + c % plane.lanes;
      const int64_t offset = n * in.stride_n + c * in.stride_c + y * in.stride_h +
                             (plane.origin_x + part.col_lo) * in.stride_w;
      if (in.dtype == DType::kUInt8) {
        const uint8_t* src = static_cast<const uint8_t*>(in.data) + offset;
        for (int x = 0; x < width; ++x) dst[x * plane.lanes] = src[x * in.stride_w] / 255.0f;
      } else {
        const float* src = static_cast<const float*>(in.data) + offset;
        for (int x = 0; x < width; ++x) dst[x * plane.lanes] = src[x * in.stride_w];
      }
    }
  }
}

void CpuChain::Impl::conv_row(const PackedLayer& layer, const Plane& src, int src_row, int src_col,
                              float* out, int64_t out_block_stride, int width) const {
  cpu::ConvRowArgs args;
  args.in = src.pixel(src_row, src_col, 0);
  args.in_row_stride = src.row_stride();
  args.in_block_stride = src.block_stride();
  args.cin = layer.cin;
  args.weight = layer.weight;
  args.bias = layer.bias;
  args.neg_slope = layer.neg_slope;
  args.cout_padded = layer.cout_padded;
  args.out = out;
  args.out_block_stride = out_block_stride;
  args.width = width;
  isa.conv_row(args);
}

// dst's pixel (r, c) is computed from src's 3x3 window with top-left (r, c): src has one more
// pixel of halo per side. Only in-image pixels are computed; the rest is the next layer's padding.
void CpuChain::Impl::conv_plane(const PackedLayer& layer, const Plane& src,
                                const Plane& dst) const {
  const InImage part = in_image_part(dst, in.h, in.w);
  zero_outside(dst, part.row_lo, part.row_hi, part.col_lo, part.col_hi);
  for (int r = part.row_lo; r < part.row_hi; ++r)
    conv_row(layer, src, r, part.col_lo, dst.pixel(r, part.col_lo, 0), dst.block_stride(),
             part.col_hi - part.col_lo);
}

void CpuChain::Impl::load_residual_row(int64_t n, int64_t c, int64_t y, int64_t x0, int width,
                                       float* dst) const {
  const int64_t offset = n * in.stride_n + c * in.stride_c + y * in.stride_h + x0 * in.stride_w;
  if (in.dtype == DType::kUInt8) {
    const uint8_t* src = static_cast<const uint8_t*>(in.data) + offset;
    for (int x = 0; x < width; ++x) dst[x] = src[x * in.stride_w] / 255.0f;
  } else {
    const float* src = static_cast<const float*>(in.data) + offset;
    for (int x = 0; x < width; ++x) dst[x] = src[x * in.stride_w];
  }
}

// Tail epilogue for one low-res row: tail channel k = (c * r + i) * r + j of pixel x goes to
// output (c, y * r + i, x * r + j), plus the input pixel (c, y, x) when residual.
template <typename OutT>
void CpuChain::Impl::write_output_row(const float* tail_row, int64_t tail_block_stride, int64_t n,
                                      int64_t y, int64_t x0, int width,
                                      const Scratch& scratch) const {
  const int r = net.scale;
  const int L = lanes();
  float* residual = scratch.residual_row.get();  // all zeros without residual
  float* segment = scratch.output_segment.get();
  OutT* out_image = static_cast<OutT*>(out.data) + n * out.stride_n;
  for (int64_t c = 0; c < out.c; ++c) {
    if (net.residual) load_residual_row(n, c, y, x0, width, residual);
    for (int64_t i = 0; i < r; ++i) {
      const int64_t first_channel = (c * r + i) * r;
      auto gather = [&](auto compile_time_r) {
        gather_output_row<decltype(compile_time_r)::value>(
            tail_row, tail_block_stride, L, first_channel, r, width, residual, segment);
      };
      const bool one_block = first_channel % L + r <= L;
      switch (one_block ? r : 0) {
        case 1: gather(std::integral_constant<int, 1>()); break;
        case 2: gather(std::integral_constant<int, 2>()); break;
        case 3: gather(std::integral_constant<int, 3>()); break;
        case 4: gather(std::integral_constant<int, 4>()); break;
        default: gather(std::integral_constant<int, 0>()); break;
      }
      OutT* dst = out_image + c * out.stride_c + (y * r + i) * out.stride_h + x0 * r * out.stride_w;
      if constexpr (std::is_same_v<OutT, uint8_t>) {
        store_segment(dst, out.stride_w, segment, int64_t{r} * width);
      } else if (net.clamp) {
        store_segment<true>(dst, out.stride_w, segment, int64_t{r} * width);
      } else {
        store_segment<false>(dst, out.stride_w, segment, int64_t{r} * width);
      }
    }
  }
}

void CpuChain::Impl::run_tile(int64_t item, const Scratch& scratch) const {
  const int64_t tiles_per_image = tiles_y * tiles_x;
  const int64_t n = item / tiles_per_image;
  const int64_t tile = item % tiles_per_image;
  const int64_t y0 = tile / tiles_x * tile_h, x0 = tile % tiles_x * tile_w;
  const int rows = static_cast<int>(std::min(tile_h, in.h - y0));
  const int cols = static_cast<int>(std::min(tile_w, in.w - x0));
  const int num = num_layers();

  auto make_plane = [&](float* data, int halo, int channels) {
    Plane plane;
    plane.data = data;
    plane.rows = rows + 2 * halo;
    plane.cols = cols + 2 * halo;
    plane.blocks = channel_blocks(channels, lanes());
    plane.lanes = lanes();
    plane.origin_y = y0 - halo;
    plane.origin_x = x0 - halo;
    return plane;
  };

  Plane src = make_plane(scratch.planes[1].get(), num, layers[0].cin);
  load_input(src, n);
  for (int l = 0; l + 1 < num; ++l) {
    const Plane dst = make_plane(scratch.planes[l % 2].get(), num - 1 - l, layers[l].cout);
    conv_plane(layers[l], src, dst);
    src = dst;
  }

  const PackedLayer& tail = layers.back();
  const int64_t tail_block_stride = static_cast<int64_t>(cols) * lanes();
  for (int r = 0; r < rows; ++r) {
    conv_row(tail, src, r, 0, scratch.tail_row.get(), tail_block_stride, cols);
    if (out.dtype == DType::kUInt8)
      write_output_row<uint8_t>(scratch.tail_row.get(), tail_block_stride, n, y0 + r, x0, cols,
                                scratch);
    else
      write_output_row<float>(scratch.tail_row.get(), tail_block_stride, n, y0 + r, x0, cols,
                              scratch);
  }
}

CpuChain::CpuChain(const Net& net, const ImageRef& in, const ImageRef& out, int tile_h, int tile_w)
    : impl_(nullptr) {
  if (const char* problem = validate(net, in, out)) throw std::invalid_argument(problem);
  auto impl = std::make_unique<Impl>();
  impl->net = net;
  impl->in = in;
  impl->out = out;
  impl->isa = select_isa();
  impl->layers = pack_layers(net, impl->lanes(), impl->packed_params);
  impl->net.layers = nullptr;  // only the packed copy is used from here on

  if (in.n > 0 && in.h > 0 && in.w > 0) {
    const TileShape shape =
        choose_tile(impl->layers, impl->lanes(), in.n, in.h, in.w, tile_h, tile_w);
    impl->tile_h = shape.h;
    impl->tile_w = shape.w;
    impl->tiles_y = ceil_div(in.h, shape.h);
    impl->tiles_x = ceil_div(in.w, shape.w);
    impl->size_planes();
  }
  impl_ = impl.release();
}

CpuChain::~CpuChain() { delete impl_; }

int64_t CpuChain::num_work_items() const { return impl_->in.n * impl_->tiles_y * impl_->tiles_x; }

void CpuChain::run(int64_t begin, int64_t end) const {
  begin = std::max<int64_t>(begin, 0);
  end = std::min(end, num_work_items());
  if (begin >= end) return;
  const Impl& impl = *impl_;
  Impl::Scratch scratch;
  scratch.planes[0] = AlignedFloats(impl.plane_capacity[0]);
  scratch.planes[1] = AlignedFloats(impl.plane_capacity[1]);
  scratch.tail_row = AlignedFloats(impl.tile_w * impl.layers.back().cout_padded);
  scratch.residual_row = AlignedFloats(impl.tile_w);
  std::fill(scratch.residual_row.get(), scratch.residual_row.get() + impl.tile_w, 0.0f);
  scratch.output_segment = AlignedFloats(impl.tile_w * impl.net.scale);
  for (int64_t item = begin; item < end; ++item) impl.run_tile(item, scratch);
}

int CpuChain::tile_h() const { return static_cast<int>(impl_->tile_h); }
int CpuChain::tile_w() const { return static_cast<int>(impl_->tile_w); }
const char* CpuChain::isa() const { return impl_->isa.name; }
const char* CpuChain::detected_isa() { return select_isa().name; }

}  // namespace repsr
