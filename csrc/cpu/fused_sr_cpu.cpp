// CpuChain: the fused chain on the CPU. One work item = (image, spatial tile). It loads the tile's
// input with a halo (one pixel per direct layer, up to four per Winograd layer: tile_spans), runs
// every layer over tile-local planes that shrink layer by layer, and writes only the final output:
// pixel shuffle, residual and clamp / uint8 quantization are fused into the tail's epilogue.
// Layers with >= 8 channels in and out run as Winograd F(4x4, 3x3) on blocks aligned to the
// image's 4x4 grid, so tiled results equal untiled ones bit for bit. Design notes: csrc/README.md.
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

#if defined(__SSE2__)  // baseline on x86-64
#include <emmintrin.h>
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
  cpu::WinogradFn winograd;
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
    return {"avx512", cpu::avx512::kLanes, cpu::avx512::conv_row, cpu::avx512::winograd_row};
  if (allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2", cpu::avx2::kLanes, cpu::avx2::conv_row, cpu::avx2::winograd_row};
#endif
  (void)cap;
  return {"portable", cpu::portable::kLanes, cpu::portable::conv_row, cpu::portable::winograd_row};
}

// Winograd F(4x4, 3x3) runs the layers with cin >= kWinogradMinChannels and
// cout >= kWinogradMinChannels (the head, cin = 1..4, stays direct: its GEMMs would be too thin).
// REPSR_CPU_WINOGRAD=0 turns it off (direct convs everywhere), for tests and comparisons.
constexpr int kWinogradMinChannels = 8;
bool winograd_enabled() {
  const char* env = std::getenv("REPSR_CPU_WINOGRAD");
  return env == nullptr || std::string(env) != "0";
}
bool use_winograd(const ConvLayer& layer, bool enabled) {
  return enabled && layer.cin >= kWinogradMinChannels && layer.cout >= kWinogradMinChannels;
}

int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Packed weights -----------------------------------------------------------------------------

// One layer's parameters, pointing into the chain's single packed buffer.
struct PackedLayer {
  int cin = 0, cout = 0, cout_padded = 0;
  const float* weight = nullptr;     // [ky][kx][ci][cout_padded], zero in the cout padding;
                                     // null for a Winograd layer
  const float* bias = nullptr;       // [cout_padded]
  const float* neg_slope = nullptr;  // [cout_padded]; null without activation
  const float* winograd = nullptr;   // U = G g G^T, [36][ci][cout_padded]; null: direct conv
};

// Winograd F(4x4, 3x3) weight transform G (winograd_kernel.inc has B^T and A^T).
constexpr double kWinogradG[6][3] = {{1.0 / 4, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};

// dst[p][ci][co] (p = 6 * i + j) = (G g G^T)[i][j] of the 3x3 kernel g = weight[co][ci], in double.
// Runs on every call (like all packing), so its loops run over co, contiguous in dst: they
// vectorize and write 36 sequential streams.
void transform_winograd_weights(const ConvLayer& layer, int cout_padded, float* dst) {
  const int cout = layer.cout, cin = layer.cin;
  std::vector<double> g(static_cast<std::size_t>(9) * cout_padded, 0.0);    // [tap][co]
  std::vector<double> gt(static_cast<std::size_t>(18) * cout_padded, 0.0);  // [i][kx][co]
  for (int ci = 0; ci < cin; ++ci) {
    for (int co = 0; co < cout; ++co)
      for (int tap = 0; tap < 9; ++tap)
        g[tap * cout_padded + co] =
            layer.weight[(static_cast<std::size_t>(co) * cin + ci) * 9 + tap];
    for (int i = 0; i < 6; ++i)
      for (int kx = 0; kx < 3; ++kx) {
        double* out = &gt[(i * 3 + kx) * cout_padded];
        const double* g0 = &g[kx * cout_padded];
        const double* g1 = &g[(3 + kx) * cout_padded];
        const double* g2 = &g[(6 + kx) * cout_padded];
        for (int co = 0; co < cout_padded; ++co)
          out[co] =
              kWinogradG[i][0] * g0[co] + kWinogradG[i][1] * g1[co] + kWinogradG[i][2] * g2[co];
      }
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j) {
        float* out = dst + (static_cast<std::size_t>(i * 6 + j) * cin + ci) * cout_padded;
        const double* t0 = &gt[(i * 3 + 0) * cout_padded];
        const double* t1 = &gt[(i * 3 + 1) * cout_padded];
        const double* t2 = &gt[(i * 3 + 2) * cout_padded];
        for (int co = 0; co < cout_padded; ++co)
          out[co] = static_cast<float>(kWinogradG[j][0] * t0[co] + kWinogradG[j][1] * t1[co] +
                                       kWinogradG[j][2] * t2[co]);
      }
  }
}

// Each array starts on a cache line.
std::size_t line_floats(std::size_t floats) {
  constexpr std::size_t kLine = kAlignment / sizeof(float);
  return (floats + kLine - 1) / kLine * kLine;
}

// Packs every layer into `storage` (one allocation: packing runs on every call, and many small
// allocations cost page faults) and returns the layers' views of it.
std::vector<PackedLayer> pack_layers(const Net& net, int lanes, AlignedFloats& storage) {
  std::vector<PackedLayer> layers(net.num_layers);
  const bool winograd = winograd_enabled();
  std::size_t total = 0;
  for (int l = 0; l < net.num_layers; ++l) {
    const ConvLayer& layer = net.layers[l];
    const std::size_t cp = round_up(layer.cout, lanes);
    total += line_floats(cp) * (layer.neg_slope != nullptr ? 2 : 1);
    total += use_winograd(layer, winograd) ? line_floats(36 * layer.cin * cp)
                                           : line_floats(9 * layer.cin * cp);
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

    if (use_winograd(layer, winograd)) {  // no direct-conv copy: it would never be read
      float* u = take(static_cast<std::size_t>(36) * layer.cin * cp);
      transform_winograd_weights(layer, cp, u);
      packed.winograd = u;
    } else {
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
    }

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

// ---- Per-tile spans -----------------------------------------------------------------------------
//
// One dimension of a tile's planes, in absolute image coordinates. Plane 0 is the input, plane
// l + 1 layer l's output (plane num: the tail's output). Working back from the tile [t0, t1):
// layer l must compute the in-image part of what layer l + 1 reads (out-of-image pixels are the
// zero padding); a Winograd layer rounds that out to whole 4x4 blocks aligned to multiples of 4
// from image pixel 0, so a pixel is always computed by the same block, from the same 6x6 window,
// whatever the tiling: tiled results equal untiled ones bit for bit. Layer l reads one more pixel
// per side than it computes.
struct Span {
  int64_t lo = 0, hi = 0;
  int64_t size() const { return hi - lo; }
};

constexpr int64_t kWinogradBlock = 4;
int64_t floor_to_block(int64_t v) {
  return v - ((v % kWinogradBlock) + kWinogradBlock) % kWinogradBlock;
}

// plane[k]: the span plane k holds; compute[l]: the span layer l computes (within plane[l + 1]).
// The image is [lo_bound, hi_bound) (unbounded to size buffers for any tile).
void tile_spans(const std::vector<PackedLayer>& layers, int64_t t0, int64_t t1, int64_t lo_bound,
                int64_t hi_bound, std::vector<Span>& plane, std::vector<Span>& compute) {
  const int num = static_cast<int>(layers.size());
  plane.resize(num + 1);
  compute.resize(num);
  Span need{t0, t1};
  for (int l = num - 1; l >= 0; --l) {
    Span c{std::max(need.lo, lo_bound), std::min(need.hi, hi_bound)};
    if (layers[l].winograd != nullptr)
      c = {floor_to_block(c.lo), floor_to_block(c.hi + kWinogradBlock - 1)};
    compute[l] = c;
    plane[l + 1] = {std::min(need.lo, c.lo), std::max(need.hi, c.hi)};
    need = {c.lo - 1, c.hi + 1};
  }
  plane[0] = need;
}

// The largest span of each plane (and computed span of each layer) over every tile of `tile`
// pixels: spans depend on the tile's start modulo the Winograd block only.
void max_spans(const std::vector<PackedLayer>& layers, int64_t tile, std::vector<int64_t>& plane,
               std::vector<int64_t>& compute) {
  const int num = static_cast<int>(layers.size());
  plane.assign(num + 1, 0);
  compute.assign(num, 0);
  std::vector<Span> p, c;
  constexpr int64_t kUnbounded = int64_t{1} << 40;
  for (int64_t offset = 0; offset < kWinogradBlock; ++offset) {
    tile_spans(layers, offset, offset + tile, -kUnbounded, kUnbounded, p, c);
    for (int k = 0; k <= num; ++k) plane[k] = std::max(plane[k], p[k].size());
    for (int l = 0; l < num; ++l) compute[l] = std::max(compute[l], c[l].size());
  }
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

  // rows[i][l]: rows layer l computes over all tile rows for heights[i]; cols likewise. Direct
  // layers have a uniform halo; Winograd layers' block-aligned spans are summed tile by tile.
  bool any_winograd = false;
  for (const PackedLayer& layer : layers) any_winograd |= layer.winograd != nullptr;
  auto coverage = [&](const std::vector<int64_t>& sizes, int64_t extent) {
    std::vector<std::vector<int64_t>> covered(sizes.size(), std::vector<int64_t>(num_layers));
    std::vector<Span> plane, compute;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      if (!any_winograd) {
        for (int l = 0; l < num_layers; ++l)
          covered[i][l] = covered_with_halo(extent, sizes[i], num_layers - 1 - l);
        continue;
      }
      for (int64_t t0 = 0; t0 < extent; t0 += sizes[i]) {
        tile_spans(layers, t0, std::min(extent, t0 + sizes[i]), 0, extent, plane, compute);
        for (int l = 0; l < num_layers; ++l) covered[i][l] += compute[l].size();
      }
    }
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
        // Winograd: 36 / 16 MACs per pixel and channel pair, plus the transforms (about 14 and
        // 10 vector operations per pixel and channel vector).
        cost += layer.winograd != nullptr
                    ? pixels * (2.25 * layer.cin * layer.cout_padded +
                                14.0 * round_up(layer.cin, lanes) + 10.0 * layer.cout_padded)
                    : pixels * 9.0 * layer.cin * layer.cout_padded;
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

// segment[(x * r + j) * segment_stride] = tail channel first_channel + j of pixel x, plus
// residual[x]: one channel of one row of the pixel-shuffled output. R > 0 is r known at compile
// time, for channels that lie in one block, so the j loop unrolls; R == 0 handles any r and
// channels spanning blocks.
template <int R>
void gather_output_row(const float* tail_row, int64_t tail_block_stride, int lanes,
                       int64_t first_channel, int r, int width, const float* residual,
                       float* segment, int64_t segment_stride) {
  if constexpr (R > 0) {
    const float* src =
        tail_row + (first_channel / lanes) * tail_block_stride + first_channel % lanes;
    for (int x = 0; x < width; ++x)
      for (int j = 0; j < R; ++j)
        segment[(x * R + j) * segment_stride] = src[x * lanes + j] + residual[x];
  } else {
    for (int j = 0; j < r; ++j) {
      const int64_t k = first_channel + j;
      const float* src = tail_row + (k / lanes) * tail_block_stride + k % lanes;
      for (int x = 0; x < width; ++x)
        segment[(int64_t{x} * r + j) * segment_stride] = src[x * lanes] + residual[x];
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
  const float clamped = std::min(std::max(0.0f, v), 1.0f);  // branch-free; NaN -> 0
  constexpr float kRoundingShift = 12582912.0f;             // 1.5 * 2^23
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
  int64_t tail_capacity = 0;           // floats of the tail's staging rows
  int64_t winograd_capacity = 0;       // floats of the Winograd kernel's V and M buffers

  // Per-call buffers: planes[1] holds the input plane and the odd layers' outputs, planes[0] the
  // even layers' outputs, so a layer never overwrites its own input.
  struct Scratch {
    AlignedFloats planes[2];
    AlignedFloats tail_row;        // one row (direct) or 4 rows (Winograd) of tail output
    AlignedFloats winograd;        // the Winograd kernel's scratch
    AlignedFloats residual_rows;   // one row of each input channel, as float
    AlignedFloats output_segment;  // one output row of the tile, before the dtype conversion
  };

  int num_layers() const { return static_cast<int>(layers.size()); }
  int lanes() const { return isa.lanes; }

  void size_planes();
  void run_tile(int64_t item, const Scratch& scratch) const;
  void load_input(const Plane& plane, int64_t n) const;
  void conv_plane(const PackedLayer& layer, const Plane& src, const Plane& dst, const Span& cy,
                  const Span& cx, const Scratch& scratch) const;
  void winograd_rows(const PackedLayer& layer, const Plane& src, int64_t y, const Span& cx,
                     float* out, int64_t out_row_stride, int64_t out_block_stride,
                     const Scratch& scratch) const;
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
  std::vector<int64_t> rows, cols, compute_rows, compute_cols;
  max_spans(layers, tile_h, rows, compute_rows);
  max_spans(layers, tile_w, cols, compute_cols);
  plane_capacity[1] = plane_floats(rows[0], cols[0], layers[0].cin, lanes());
  for (int l = 0; l + 1 < num; ++l)
    plane_capacity[l % 2] = std::max(
        plane_capacity[l % 2], plane_floats(rows[l + 1], cols[l + 1], layers[l].cout, lanes()));
  const PackedLayer& tail = layers.back();
  tail_capacity = (tail.winograd != nullptr ? kWinogradBlock * compute_cols[num - 1] : tile_w) *
                  tail.cout_padded;
  for (const PackedLayer& layer : layers)
    if (layer.winograd != nullptr)
      winograd_capacity = std::max(
          winograd_capacity, cpu::winograd_scratch_floats(layer.cin, layer.cout_padded, lanes()));
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

// Output rows [y, y + 4) x columns cx (whole Winograd blocks) from src, whose span starts one
// pixel before.
void CpuChain::Impl::winograd_rows(const PackedLayer& layer, const Plane& src, int64_t y,
                                   const Span& cx, float* out, int64_t out_row_stride,
                                   int64_t out_block_stride, const Scratch& scratch) const {
  cpu::WinogradArgs args;
  args.in = src.pixel(static_cast<int>(y - 1 - src.origin_y),
                      static_cast<int>(cx.lo - 1 - src.origin_x), 0);
  args.in_row_stride = src.row_stride();
  args.in_block_stride = src.block_stride();
  args.cin = layer.cin;
  args.weight = layer.winograd;
  args.bias = layer.bias;
  args.neg_slope = layer.neg_slope;
  args.cout_padded = layer.cout_padded;
  args.out = out;
  args.out_row_stride = out_row_stride;
  args.out_block_stride = out_block_stride;
  args.blocks = static_cast<int>(cx.size() / kWinogradBlock);
  args.scratch = scratch.winograd.get();
  isa.winograd(args);
}

// Computes the span cy x cx of dst (tile_spans), each pixel from src's 3x3 window centred on it,
// then zeroes dst's out-of-image pixels: the next layer's padding.
void CpuChain::Impl::conv_plane(const PackedLayer& layer, const Plane& src, const Plane& dst,
                                const Span& cy, const Span& cx, const Scratch& scratch) const {
  const int col = static_cast<int>(cx.lo - dst.origin_x);
  if (layer.winograd != nullptr) {
    for (int64_t y = cy.lo; y < cy.hi; y += kWinogradBlock)
      winograd_rows(layer, src, y, cx, dst.pixel(static_cast<int>(y - dst.origin_y), col, 0),
                    dst.row_stride(), dst.block_stride(), scratch);
  } else {
    for (int64_t y = cy.lo; y < cy.hi; ++y)
      conv_row(layer, src, static_cast<int>(y - 1 - src.origin_y),
               static_cast<int>(cx.lo - 1 - src.origin_x),
               dst.pixel(static_cast<int>(y - dst.origin_y), col, 0), dst.block_stride(),
               static_cast<int>(cx.size()));
  }
  const InImage part = in_image_part(dst, in.h, in.w);
  zero_outside(dst, part.row_lo, part.row_hi, part.col_lo, part.col_hi);
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
// output (c, y * r + i, x * r + j), plus the input pixel (c, y, x) when residual. Each output row
// is assembled in `segment` in the output's own order and then stored in one pass: channel by
// channel for planar outputs, all channels interleaved for channels-last ones (HWC uint8 frames,
// channels_last tensors), whose rows are one contiguous run.
template <typename OutT>
void CpuChain::Impl::write_output_row(const float* tail_row, int64_t tail_block_stride, int64_t n,
                                      int64_t y, int64_t x0, int width,
                                      const Scratch& scratch) const {
  const int r = net.scale;
  const int L = lanes();
  const bool interleaved = out.stride_c == 1 && out.stride_w == out.c;
  const int64_t channels_per_segment = interleaved ? out.c : 1;
  const int64_t segment_length = int64_t{r} * width * channels_per_segment;
  const int64_t store_stride = interleaved ? 1 : out.stride_w;
  float* residual = scratch.residual_rows.get();  // [channel][tile_w], all zeros without residual
  float* segment = scratch.output_segment.get();
  if (net.residual)
    for (int64_t c = 0; c < out.c; ++c)
      load_residual_row(n, c, y, x0, width, residual + c * tile_w);

  OutT* out_image = static_cast<OutT*>(out.data) + n * out.stride_n;
  for (int64_t c0 = 0; c0 < out.c; c0 += channels_per_segment) {
    for (int64_t i = 0; i < r; ++i) {
      for (int64_t c = c0; c < c0 + channels_per_segment; ++c) {
        const int64_t first_channel = (c * r + i) * r;
        auto gather = [&](auto compile_time_r) {
          gather_output_row<decltype(compile_time_r)::value>(
              tail_row, tail_block_stride, L, first_channel, r, width, residual + c * tile_w,
              segment + (c - c0), channels_per_segment);
        };
        const bool one_block = first_channel % L + r <= L;
        switch (one_block ? r : 0) {
          case 1: gather(std::integral_constant<int, 1>()); break;
          case 2: gather(std::integral_constant<int, 2>()); break;
          case 3: gather(std::integral_constant<int, 3>()); break;
          case 4: gather(std::integral_constant<int, 4>()); break;
          default: gather(std::integral_constant<int, 0>()); break;
        }
      }
      OutT* dst =
          out_image + c0 * out.stride_c + (y * r + i) * out.stride_h + x0 * r * out.stride_w;
      if constexpr (std::is_same_v<OutT, uint8_t>) {
        store_segment(dst, store_stride, segment, segment_length);
      } else if (net.clamp) {
        store_segment<true>(dst, store_stride, segment, segment_length);
      } else {
        store_segment<false>(dst, store_stride, segment, segment_length);
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

  std::vector<Span> plane_y, plane_x, compute_y, compute_x;
  tile_spans(layers, y0, y0 + rows, 0, in.h, plane_y, compute_y);
  tile_spans(layers, x0, x0 + cols, 0, in.w, plane_x, compute_x);
  auto make_plane = [&](float* data, int k, int channels) {
    Plane plane;
    plane.data = data;
    plane.rows = static_cast<int>(plane_y[k].size());
    plane.cols = static_cast<int>(plane_x[k].size());
    plane.blocks = channel_blocks(channels, lanes());
    plane.lanes = lanes();
    plane.origin_y = plane_y[k].lo;
    plane.origin_x = plane_x[k].lo;
    return plane;
  };

  Plane src = make_plane(scratch.planes[1].get(), 0, layers[0].cin);
  load_input(src, n);
  for (int l = 0; l + 1 < num; ++l) {
    const Plane dst = make_plane(scratch.planes[l % 2].get(), l + 1, layers[l].cout);
    conv_plane(layers[l], src, dst, compute_y[l], compute_x[l], scratch);
    src = dst;
  }

  const PackedLayer& tail = layers.back();
  auto write_row = [&](const float* tail_row, int64_t tail_block_stride, int64_t y) {
    if (out.dtype == DType::kUInt8)
      write_output_row<uint8_t>(tail_row, tail_block_stride, n, y, x0, cols, scratch);
    else
      write_output_row<float>(tail_row, tail_block_stride, n, y, x0, cols, scratch);
  };
  if (tail.winograd != nullptr) {
    // Four rows of whole blocks at a time into the staging rows, then the epilogue of the rows
    // inside the tile.
    const Span cy = compute_y[num - 1], cx = compute_x[num - 1];
    const int64_t block_stride = cx.size() * lanes();
    const int64_t row_stride = block_stride * channel_blocks(tail.cout, lanes());
    for (int64_t by = cy.lo; by < cy.hi; by += kWinogradBlock) {
      winograd_rows(tail, src, by, cx, scratch.tail_row.get(), row_stride, block_stride, scratch);
      for (int64_t y = std::max<int64_t>(by, y0); y < std::min<int64_t>(by + 4, y0 + rows); ++y)
        write_row(scratch.tail_row.get() + (y - by) * row_stride + (x0 - cx.lo) * lanes(),
                  block_stride, y);
    }
  } else {
    const int64_t tail_block_stride = static_cast<int64_t>(cols) * lanes();
    for (int r = 0; r < rows; ++r) {
      conv_row(tail, src, static_cast<int>(y0 + r - 1 - src.origin_y),
               static_cast<int>(x0 - 1 - src.origin_x), scratch.tail_row.get(), tail_block_stride,
               cols);
      write_row(scratch.tail_row.get(), tail_block_stride, y0 + r);
    }
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
  scratch.tail_row = AlignedFloats(impl.tail_capacity);
  scratch.winograd = AlignedFloats(impl.winograd_capacity);
  scratch.residual_rows = AlignedFloats(impl.out.c * impl.tile_w);
  std::fill(scratch.residual_rows.get(), scratch.residual_rows.get() + impl.out.c * impl.tile_w,
            0.0f);
  scratch.output_segment = AlignedFloats(impl.tile_w * impl.net.scale * impl.out.c);
  for (int64_t item = begin; item < end; ++item) impl.run_tile(item, scratch);
#if defined(__SSE2__)
  _mm_sfence();  // order the epilogue's non-temporal stores before the caller's next access
#endif
}

int CpuChain::tile_h() const { return static_cast<int>(impl_->tile_h); }
int CpuChain::tile_w() const { return static_cast<int>(impl_->tile_w); }
const char* CpuChain::isa() const { return impl_->isa.name; }
const char* CpuChain::detected_isa() { return select_isa().name; }

}  // namespace repsr
