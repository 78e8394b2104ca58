// Host tests of the CUDA chain's tile arithmetic (csrc/cuda/tiling.cuh), no GPU needed:
//   - tile grids cover every image pixel exactly once, with 64-bit block decoding;
//   - a host simulation of the kernels' block structure (segment planes with halos, zero outside
//     the image after every layer, boundary maps, tail epilogue with pixel shuffle and residual)
//     reproduces a full-image reference chain, for hand-picked and planned segmentations;
//   - the tensor-core fragment conventions (ldmatrix rows, packed B, accumulator mapping) emulated
//     per the PTX ISA reproduce a direct convolution;
//   - segment plans cover the layers in order, respect the shared-memory budget and pick sensible
//     splits; workspace regions are aligned and disjoint; offsets stay 64-bit.
// Prints "N passed, M failed" last and returns non-zero on failure.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/emulation/memory_model.h"  // the shared-memory bank model, header-only
#include "cuda/tiling.cuh"
#include "tests/check.h"

namespace {

using namespace repsr::cuda;
using repsr::ImageRef;

using repsr_test::check;

std::string dims(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

// ---- Tile grids ---------------------------------------------------------------------------------

void test_basic_arithmetic() {
  check(ceil_div(0, 4) == 0 && ceil_div(1, 4) == 1 && ceil_div(4, 4) == 1 && ceil_div(5, 4) == 2,
        "ceil_div");
  check(round_up(17, 16) == 32 && round_up(16, 16) == 16 && round_up(1, 8) == 8, "round_up");
  check(ceil_div(int64_t{1} << 40, 3) == ((int64_t{1} << 40) + 2) / 3, "ceil_div 64-bit");
}

// Every pixel of every image is covered by exactly one tile, and the decoded tiles are distinct.
void test_tile_cover(int64_t n, int64_t h, int64_t w, int th, int tw) {
  const TileGrid g = make_tile_grid(n, h, w, th, tw);
  std::vector<int> count(static_cast<size_t>(n * h * w), 0);
  bool origins_ok = true;
  for (int64_t b = 0; b < grid_blocks(g); ++b) {
    const TileCoord t = decode_block(b, g);
    if (t.n < 0 || t.n >= n || t.y0 < 0 || t.y0 >= h || t.x0 < 0 || t.x0 >= w ||
        t.y0 % th != 0 || t.x0 % tw != 0)
      origins_ok = false;
    for (int64_t y = t.y0; y < t.y0 + th; ++y)
      for (int64_t x = t.x0; x < t.x0 + tw; ++x)
        if (in_image(y, x, h, w)) ++count[static_cast<size_t>((t.n * h + y) * w + x)];
  }
  bool once = true;
  for (int c : count) once = once && c == 1;
  const std::string what = "n=" + std::to_string(n) + " " + dims(h, w) + " tile " + dims(th, tw);
  check(origins_ok, "tile origins inside the image: " + what);
  check(once, "tiles cover each pixel exactly once: " + what);
}

// Large grids: check the arithmetic along each axis and the first/last blocks with 64-bit indices.
void test_large_grid(int64_t n, int64_t h, int64_t w, int th, int tw) {
  const TileGrid g = make_tile_grid(n, h, w, th, tw);
  const std::string what = "large " + dims(h, w) + " tile " + dims(th, tw);
  check((g.tiles_y - 1) * th < h && g.tiles_y * th >= h, "rows covered: " + what);
  check((g.tiles_x - 1) * tw < w && g.tiles_x * tw >= w, "cols covered: " + what);
  const int64_t blocks = grid_blocks(g);
  check(blocks == n * g.tiles_y * g.tiles_x, "block count: " + what);
  const TileCoord last = decode_block(blocks - 1, g);
  check(last.n == n - 1 && last.y0 == (g.tiles_y - 1) * th && last.x0 == (g.tiles_x - 1) * tw,
        "last block decodes to the last tile: " + what);
  const TileCoord mid = decode_block(g.tiles_y * g.tiles_x + g.tiles_x + 1, g);
  check(mid.n == (n > 1 ? 1 : 0) || n == 1, "second image decodes: " + what);
}

void test_planes() {
  bool ok = true;
  for (int k = 1; k <= 16; ++k)
    for (int th : {1, 3, 8})
      for (int tw : {1, 17}) {
        const int64_t ty = 5 * th, tx = 7 * tw;
        for (int j = 0; j < k; ++j) {
          const Plane a = segment_plane(k, j, th, tw, ty, tx);
          const Plane b = segment_plane(k, j + 1, th, tw, ty, tx);
          // A 3x3 valid conv shrinks a plane by one pixel on each side.
          ok = ok && b.rows == a.rows - 2 && b.cols == a.cols - 2 && b.y0 == a.y0 + 1 &&
               b.x0 == a.x0 + 1;
        }
        const Plane in = segment_plane(k, 0, th, tw, ty, tx);
        const Plane out = segment_plane(k, k, th, tw, ty, tx);
        ok = ok && out.rows == th && out.cols == tw && out.y0 == ty && out.x0 == tx;
        // The receptive field of the tile's corner pixels after k layers is exactly plane 0.
        ok = ok && in.y0 == ty - k && in.x0 == tx - k && in.y0 + in.rows == ty + th + k &&
             in.x0 + in.cols == tx + tw + k;
      }
  check(ok, "segment planes shrink by one pixel per layer and plane 0 is the receptive field");
}

void test_offsets() {
  // An 8K input at x4 (LR 4320 x 7680 -> 17280 x 30720, 3 channels, NCHW): 1.59 G elements per
  // image, so the second image of a batch starts beyond 2^31.
  ImageRef out;
  out.n = 2;
  out.c = 3;
  out.h = 17280;
  out.w = 30720;
  out.stride_w = 1;
  out.stride_h = out.w;
  out.stride_c = out.h * out.w;
  out.stride_n = out.c * out.stride_c;
  const int64_t last = image_offset(out, 1, 2, 17279, 30719);
  check(last == 2 * 3 * int64_t{17280} * 30720 - 1, "image_offset of the last 8K x4 element");
  check(last > (int64_t{1} << 31), "8K x4 batch offsets exceed 2^31");
  // uint8 NHWC output [N, H, W, C] seen as (n, c, y, x).
  ImageRef hwc = out;
  hwc.stride_c = 1;
  hwc.stride_w = 3;
  hwc.stride_h = 3 * out.w;
  hwc.stride_n = 3 * out.w * out.h;
  check(image_offset(hwc, 1, 2, 17279, 30719) == 2 * 3 * int64_t{17280} * 30720 - 1,
        "image_offset NHWC last element");
  // Pixel-shuffle coordinates of the last output pixel stay exact in 64 bits.
  const int64_t y = 4319, x = 7679;
  const ShuffleTarget t = shuffle_target(47, 4);
  check(y * 4 + t.i == 17279 && x * 4 + t.j == 30719 && t.c == 2, "shuffle target of the last pixel");
  // A 64-channel fp16 boundary map of a 4K batch of 4: 4.2 G elements.
  const int64_t map_last = tc_map_offset(3, 2159, 3839, 2160, 3840, 64) + 63;
  check(map_last == int64_t{4} * 2160 * 3840 * 64 - 1, "tc_map_offset 64-bit");
  check(f32_map_offset(3, 63, 2159, 3839, 2160, 3840, 64) == int64_t{4} * 64 * 2160 * 3840 - 1,
        "f32_map_offset 64-bit");
  // Grid with more than 65535 tiles along one axis still decodes (1-D grid).
  const TileGrid g = make_tile_grid(1, 8, 1 << 20, 1, 1);
  check(grid_blocks(g) == 8 * (int64_t{1} << 20) && decode_block(grid_blocks(g) - 1, g).x0 == (1 << 20) - 1,
        "1-D grid beyond 65535 tiles");
}

void test_shuffle() {
  bool ok = true;
  for (int r = 1; r <= 4; ++r)
    for (int co = 0; co < 3 * r * r; ++co) {
      const ShuffleTarget t = shuffle_target(co, r);
      ok = ok && t.c * r * r + t.i * r + t.j == co && t.i >= 0 && t.i < r && t.j >= 0 && t.j < r;
    }
  check(ok, "shuffle_target inverts c * r^2 + i * r + j");
}

// ---- Host simulation of the segment kernels ------------------------------------------------------

struct SimLayer {
  int cin, cout;
  std::vector<double> w, b, slope;  // OIHW; slope empty = no activation
};

struct SimNet {
  std::vector<SimLayer> layers;
  int scale = 1;
  bool residual = false, clamp = false;
  std::vector<int> widths() const {
    std::vector<int> wv = {layers[0].cin};
    for (const SimLayer& l : layers) wv.push_back(l.cout);
    return wv;
  }
};

SimNet make_sim_net(std::mt19937& rng, std::vector<int> widths, int scale, bool residual) {
  std::normal_distribution<double> normal;
  SimNet net;
  net.scale = scale;
  net.residual = residual;
  for (size_t l = 0; l + 1 < widths.size(); ++l) {
    SimLayer layer;
    layer.cin = widths[l];
    layer.cout = widths[l + 1];
    for (int i = 0; i < layer.cout * layer.cin * 9; ++i)
      layer.w.push_back(normal(rng) / std::sqrt(9.0 * layer.cin));
    // Large biases: a tile that forgets to zero the border would see them through the padding.
    for (int i = 0; i < layer.cout; ++i) layer.b.push_back(0.5 + 0.3 * normal(rng));
    if (l + 2 < widths.size())
      for (int i = 0; i < layer.cout; ++i) layer.slope.push_back(0.1 * (i % 3));
    net.layers.push_back(layer);
  }
  return net;
}

double act(const SimLayer& l, int co, double v) {
  return (l.slope.empty() || v >= 0) ? v : v * l.slope[co];
}

// Image as [n][c][y][x] doubles.
struct SimImage {
  int64_t n = 0, c = 0, h = 0, w = 0;
  std::vector<double> v;
  double& at(int64_t in, int64_t ic, int64_t y, int64_t x) { return v[((in * c + ic) * h + y) * w + x]; }
  double at(int64_t in, int64_t ic, int64_t y, int64_t x) const {
    return v[((in * c + ic) * h + y) * w + x];
  }
};

SimImage sim_reference(const SimNet& net, const SimImage& in) {
  SimImage cur = in;
  for (const SimLayer& l : net.layers) {
    SimImage next{cur.n, l.cout, cur.h, cur.w, std::vector<double>(cur.n * l.cout * cur.h * cur.w)};
    for (int64_t n = 0; n < cur.n; ++n)
      for (int co = 0; co < l.cout; ++co)
        for (int64_t y = 0; y < cur.h; ++y)
          for (int64_t x = 0; x < cur.w; ++x) {
            double s = l.b[co];
            for (int ci = 0; ci < l.cin; ++ci)
              for (int t = 0; t < 9; ++t) {
                const int64_t yy = y + t / 3 - 1, xx = x + t % 3 - 1;
                if (in_image(yy, xx, cur.h, cur.w)) s += l.w[(co * l.cin + ci) * 9 + t] * cur.at(n, ci, yy, xx);
              }
            next.at(n, co, y, x) = act(l, co, s);
          }
    cur = std::move(next);
  }
  const int r = net.scale;
  SimImage out{in.n, cur.c / (r * r), in.h * r, in.w * r, {}};
  out.v.assign(out.n * out.c * out.h * out.w, 0.0);
  for (int64_t n = 0; n < in.n; ++n)
    for (int co = 0; co < cur.c; ++co)
      for (int64_t y = 0; y < in.h; ++y)
        for (int64_t x = 0; x < in.w; ++x) {
          const ShuffleTarget t = shuffle_target(co, r);
          double v = cur.at(n, co, y, x);
          if (net.residual) v += in.at(n, t.c, y, x);
          if (net.clamp) v = std::min(1.0, std::max(0.0, v));
          out.at(n, t.c, y * r + t.i, x * r + t.j) = v;
        }
  return out;
}

// Runs the chain the way the kernels do, block by block, for the given segmentation.
// writes counts how often each output element is written (must be exactly once).
SimImage sim_tiled(const SimNet& net, const SimImage& in, const std::vector<SegmentPlan>& segs,
                   std::vector<int>* writes, bool* planes_ok) {
  const int r = net.scale;
  const int L = static_cast<int>(net.layers.size());
  SimImage out{in.n, net.layers[L - 1].cout / (r * r), in.h * r, in.w * r, {}};
  out.v.assign(out.n * out.c * out.h * out.w, 0.0);
  writes->assign(out.v.size(), 0);
  SimImage map_in, map_out;
  *planes_ok = true;
  for (const SegmentPlan& seg : segs) {
    const int k = seg.last - seg.first;
    const bool tail = seg.last == L;
    const int cmap = net.layers[seg.last - 1].cout;
    map_out = SimImage{in.n, cmap, in.h, in.w, std::vector<double>(in.n * cmap * in.h * in.w, -1e9)};
    const TileGrid g = make_tile_grid(in.n, in.h, in.w, seg.th, seg.tw);
    for (int64_t b = 0; b < grid_blocks(g); ++b) {
      const TileCoord t = decode_block(b, g);
      Plane p = segment_plane(k, 0, seg.th, seg.tw, t.y0, t.x0);
      const int c0 = net.layers[seg.first].cin;
      std::vector<double> plane(static_cast<size_t>(c0) * p.rows * p.cols);
      for (int c = 0; c < c0; ++c)
        for (int py = 0; py < p.rows; ++py)
          for (int px = 0; px < p.cols; ++px) {
            const int64_t y = p.y0 + py, x = p.x0 + px;
            double v = 0;
            if (in_image(y, x, in.h, in.w)) v = seg.first == 0 ? in.at(t.n, c, y, x) : map_in.at(t.n, c, y, x);
            plane[(static_cast<size_t>(c) * p.rows + py) * p.cols + px] = v;
          }
      for (int j = 0; j < k; ++j) {
        const SimLayer& l = net.layers[seg.first + j];
        const Plane q = segment_plane(k, j + 1, seg.th, seg.tw, t.y0, t.x0);
        if (q.rows != p.rows - 2 || q.cols != p.cols - 2) *planes_ok = false;
        std::vector<double> next(static_cast<size_t>(l.cout) * q.rows * q.cols);
        for (int co = 0; co < l.cout; ++co)
          for (int py = 0; py < q.rows; ++py)
            for (int px = 0; px < q.cols; ++px) {
              double s = l.b[co];
              for (int ci = 0; ci < l.cin; ++ci)
                for (int tap = 0; tap < 9; ++tap)
                  s += l.w[(co * l.cin + ci) * 9 + tap] *
                       plane[(static_cast<size_t>(ci) * p.rows + py + tap / 3) * p.cols + px + tap % 3];
              s = act(l, co, s);
              const int64_t y = q.y0 + py, x = q.x0 + px;
              const bool inside = in_image(y, x, in.h, in.w);
              if (tail && j == k - 1) {
                if (!inside) continue;
                const ShuffleTarget st = shuffle_target(co, r);
                if (net.residual) s += in.at(t.n, st.c, y, x);
                if (net.clamp) s = std::min(1.0, std::max(0.0, s));
                const int64_t oy = y * r + st.i, ox = x * r + st.j;
                out.at(t.n, st.c, oy, ox) = s;
                ++(*writes)[static_cast<size_t>(((t.n * out.c + st.c) * out.h + oy) * out.w + ox)];
              } else {
                next[(static_cast<size_t>(co) * q.rows + py) * q.cols + px] = inside ? s : 0.0;
              }
            }
        plane.swap(next);
        p = q;
      }
      if (!tail) {
        if (p.rows != seg.th || p.cols != seg.tw || p.y0 != t.y0 || p.x0 != t.x0) *planes_ok = false;
        for (int c = 0; c < cmap; ++c)
          for (int py = 0; py < p.rows; ++py)
            for (int px = 0; px < p.cols; ++px) {
              const int64_t y = p.y0 + py, x = p.x0 + px;
              if (in_image(y, x, in.h, in.w))
                map_out.at(t.n, c, y, x) = plane[(static_cast<size_t>(c) * p.rows + py) * p.cols + px];
            }
      }
    }
    map_in = std::move(map_out);
  }
  return out;
}

std::vector<SegmentPlan> manual_segments(const std::vector<int>& cuts, int L, int th, int tw) {
  std::vector<SegmentPlan> segs;
  int first = 0;
  for (int cut : cuts) {
    SegmentPlan s;
    s.first = first;
    s.last = cut;
    s.th = th;
    s.tw = tw;
    segs.push_back(s);
    first = cut;
  }
  SegmentPlan s;
  s.first = first;
  s.last = L;
  s.th = th;
  s.tw = tw;
  segs.push_back(s);
  return segs;
}

void sim_case(std::mt19937& rng, const std::string& name, std::vector<int> widths, int scale,
              bool residual, bool clamp, int64_t n, int64_t h, int64_t w,
              const std::vector<SegmentPlan>& segs) {
  SimNet net = make_sim_net(rng, widths, scale, residual);
  net.clamp = clamp;
  std::uniform_real_distribution<double> uni(0, 1);
  SimImage in{n, widths[0], h, w, {}};
  for (int64_t i = 0; i < n * widths[0] * h * w; ++i) in.v.push_back(uni(rng));
  const SimImage ref = sim_reference(net, in);
  std::vector<int> writes;
  bool planes_ok = false;
  const SimImage got = sim_tiled(net, in, segs, &writes, &planes_ok);
  double err = 0;
  for (size_t i = 0; i < ref.v.size(); ++i) err = std::max(err, std::abs(ref.v[i] - got.v[i]));
  bool once = true;
  for (int c : writes) once = once && c == 1;
  std::string seg_desc;
  for (const SegmentPlan& s : segs)
    seg_desc += " [" + std::to_string(s.first) + "," + std::to_string(s.last) + ")@" + dims(s.th, s.tw);
  check(planes_ok, "sim planes: " + name + seg_desc);
  check(once, "sim writes each output element once: " + name + seg_desc);
  check(err < 1e-9, "sim tiled == reference (max err " + std::to_string(err) + "): " + name + seg_desc);
}

void test_simulation() {
  std::mt19937 rng(1234);
  // Hand-picked tiles and splits, including 1x1 images, 1x17 strips, tiles larger than the image,
  // and tiles that do not divide the image.
  struct Shape {
    int64_t n, h, w;
  };
  const Shape shapes[] = {{1, 1, 1}, {1, 1, 17}, {1, 17, 1}, {2, 7, 3}, {1, 13, 11}, {1, 9, 20}};
  const int tiles[][2] = {{1, 1}, {1, 17}, {3, 2}, {4, 4}, {5, 7}, {16, 16}};
  for (const Shape& s : shapes)
    for (const auto& t : tiles) {
      const std::string name = "n=" + std::to_string(s.n) + " " + dims(s.h, s.w);
      sim_case(rng, name + " 1 layer x2", {2, 8}, 2, true, false, s.n, s.h, s.w,
               manual_segments({}, 1, t[0], t[1]));
      sim_case(rng, name + " 4 layers x3", {3, 4, 5, 4, 27}, 3, true, true, s.n, s.h, s.w,
               manual_segments({}, 4, t[0], t[1]));
      sim_case(rng, name + " 5 layers split 2|4", {1, 3, 2, 3, 2, 4}, 2, false, false, s.n, s.h, s.w,
               manual_segments({2, 4}, 5, t[0], t[1]));
    }
  // Mixed tiles per segment.
  std::vector<SegmentPlan> mixed = manual_segments({1, 3}, 6, 1, 1);
  mixed[0].th = 2; mixed[0].tw = 9;
  mixed[1].th = 5; mixed[1].tw = 3;
  mixed[2].th = 4; mixed[2].tw = 4;
  sim_case(rng, "mixed tiles", {3, 4, 4, 4, 4, 4, 12}, 2, true, false, 2, 11, 13, mixed);

  // Segmentations chosen by the planner with a tiny shared-memory budget (forces splits).
  DeviceModel tiny;
  tiny.smem_per_block = 12 * 1024;
  tiny.smem_per_sm = 24 * 1024;
  tiny.sm_count = 4;
  for (Path path : {Path::kFp32, Path::kTensorCore}) {
    ChainShape s;
    s.path = path;
    s.widths = {3, 8, 8, 8, 8, 8, 8, 12};
    s.n = 1;
    s.h = 23;
    s.w = 19;
    s.scale = 2;
    s.residual = true;
    const ChainPlan plan = plan_chain(tiny, s);
    check(plan.error == nullptr && plan.segments.size() > 1,
          std::string("tiny budget splits the chain (") + (path == Path::kFp32 ? "fp32" : "tc") + ")");
    if (plan.error == nullptr)
      sim_case(rng, std::string("planned ") + (path == Path::kFp32 ? "fp32" : "tc"), s.widths, 2,
               true, false, s.n, s.h, s.w, plan.segments);
  }
}

// ---- Tensor-core fragment emulation -------------------------------------------------------------
// Emulates conv_layer<T, NT> of segment_tc.cuh for one layer on a small plane: ldmatrix per the
// PTX description (lane l supplies the row address of row l % 8 of matrix l / 8; the lane then
// holds row l / 4, elements 2 (l % 4) and +1 of each matrix), B from the packed array
// (tc_b_offset), mma.m16n8k16 per the PTX fragment layouts, and the epilogue via tc_acc_row/col.

// PTX A fragment (16x16, row-major) element positions of register pair p (a0a1..a6a7).
void a_position(int lane, int reg, int half, int* row, int* col) {
  const int g = lane / 4, t = lane % 4;
  *row = g + ((reg & 1) ? 8 : 0);
  *col = 2 * t + half + ((reg & 2) ? 8 : 0);
}

void test_tc_fragments(int cin, int cout, int rows_out, int cols_out) {
  std::mt19937 rng(cin * 131 + cout * 7 + rows_out);
  std::uniform_real_distribution<double> uni(-1, 1);
  const int cin_p = tc_channels(cin), stride = tc_pixel_stride(cin);
  const int calloc = tc_cout_alloc(cout), NT = tc_warp_ntiles(cout), pairs = calloc / 16;
  const int rows_in = rows_out + 2, cols_in = cols_out + 2;
  // Input plane with the kernel's layout (pixel stride, row pitch); channel padding zero, skew and
  // row padding garbage (never read: a read would show in the error).
  const int pitch = tc_row_pitch(cin, cols_in);
  auto at = [&](int py, int px) { return static_cast<size_t>(tc_pixel_offset(cin, cols_in, py, px)); };
  std::vector<double> plane(static_cast<size_t>(rows_in) * pitch, 1e30);
  for (int py = 0; py < rows_in; ++py)
    for (int px = 0; px < cols_in; ++px)
      for (int c = 0; c < cin_p; ++c) plane[at(py, px) + c] = c < cin ? uni(rng) : 0.0;
  check(stride * cols_in <= pitch && pitch * 2 % 16 == 0, "row pitch holds a row, 16-byte aligned: cin " + std::to_string(cin));
  std::vector<double> w(static_cast<size_t>(cout) * cin * 9);
  for (double& v : w) v = uni(rng);
  // Pack B with tc_b_source exactly as pack_weights_kernel does.
  std::vector<double> packed(static_cast<size_t>(tc_weight_elements(cin, cout)));
  std::vector<int> hit(static_cast<size_t>(9) * cin_p * calloc, 0);
  for (int64_t e = 0; e < static_cast<int64_t>(packed.size()); ++e) {
    int64_t k;
    int co;
    tc_b_source(e, calloc, &k, &co);
    const int tap = static_cast<int>(k / cin_p), ci = static_cast<int>(k % cin_p);
    ++hit[static_cast<size_t>(k) * calloc + co];
    packed[static_cast<size_t>(e)] = (ci < cin && co < cout) ? w[(static_cast<size_t>(co) * cin + ci) * 9 + tap] : 0.0;
  }
  bool bijective = true;
  for (int h : hit) bijective = bijective && h == 1;
  const std::string what = "cin " + std::to_string(cin) + " cout " + std::to_string(cout) + " plane " + dims(rows_out, cols_out);
  check(bijective, "packed B covers every (k, n) exactly once: " + what);

  const int pixels = rows_out * cols_out;
  const int m_blocks = static_cast<int>(ceil_div(tc_order_slots(rows_out, cols_out), kTcWarpPixels));
  const int n_blocks = 2 * pairs / NT;
  check(int64_t{m_blocks} * n_blocks == tc_units(cout, rows_out, cols_out), "tc_units: " + what);
  std::vector<double> out(static_cast<size_t>(pixels) * calloc, std::nan(""));
  std::vector<int> out_writes(static_cast<size_t>(pixels) * calloc, 0);
  const int k_steps = 9 * cin_p / 16, c_steps = cin_p / 16;
  for (int mb = 0; mb < m_blocks; ++mb)
    for (int nb = 0; nb < n_blocks; ++nb) {
      std::vector<double> acc(static_cast<size_t>(32) * kTcWarpMTiles * NT * 4, 0.0);
      auto accr = [&](int lane, int mt, int nt, int r) -> double& {
        return acc[((static_cast<size_t>(lane) * kTcWarpMTiles + mt) * NT + nt) * 4 + r];
      };
      for (int kc = 0; kc < k_steps; ++kc) {
        const int tap = kc / c_steps, cc = kc % c_steps;
        for (int mt = 0; mt < kTcWarpMTiles; ++mt) {
          // ldmatrix: per lane row address (element index into the plane).
          int64_t row_addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            int py, px;
            tc_order_pixel(mb * kTcWarpPixels + mt * 16 + tc_a_row(lane), rows_out, cols_out, &py, &px);
            row_addr[lane] = static_cast<int64_t>(at(py + tap / 3, px + tap % 3)) + tc_a_col(lane) + cc * 16;
          }
          // Lane l's register i holds matrix i, row l / 4, elements 2 (l % 4) + {0, 1}.
          double A[16][16];
          for (int lane = 0; lane < 32; ++lane)
            for (int reg = 0; reg < 4; ++reg)
              for (int half = 0; half < 2; ++half) {
                const int src_lane = reg * 8 + lane / 4;
                const double v = plane[static_cast<size_t>(row_addr[src_lane] + 2 * (lane % 4) + half)];
                int row, col;
                a_position(lane, reg, half, &row, &col);
                A[row][col] = v;
              }
          for (int nt = 0; nt < NT; ++nt) {
            const int q = nt / 2;
            double B[16][8];
            for (int lane = 0; lane < 32; ++lane) {
              const int64_t base = tc_b_offset(kc, nb * NT / 2 + q, lane, pairs) + (nt % 2) * 4;
              const int g = lane / 4, t = lane % 4;
              B[2 * t][g] = packed[static_cast<size_t>(base + 0)];
              B[2 * t + 1][g] = packed[static_cast<size_t>(base + 1)];
              B[2 * t + 8][g] = packed[static_cast<size_t>(base + 2)];
              B[2 * t + 9][g] = packed[static_cast<size_t>(base + 3)];
            }
            // D fragment per PTX: c0 c1 = (g, 2t + {0,1}), c2 c3 = (g + 8, 2t + {0,1}).
            for (int lane = 0; lane < 32; ++lane) {
              const int g = lane / 4, t = lane % 4;
              for (int r = 0; r < 4; ++r) {
                const int row = g + (r >= 2 ? 8 : 0), col = 2 * t + (r & 1);
                double s = 0;
                for (int kk = 0; kk < 16; ++kk) s += A[row][kk] * B[kk][col];
                accr(lane, mt, nt, r) += s;
              }
            }
          }
        }
      }
      // Epilogue mapping (as the kernel).
      for (int lane = 0; lane < 32; ++lane)
        for (int mt = 0; mt < kTcWarpMTiles; ++mt)
          for (int nt = 0; nt < NT; ++nt)
            for (int r = 0; r < 4; ++r) {
              int py, px;
              if (!tc_order_pixel(mb * kTcWarpPixels + mt * 16 + tc_acc_row(lane, r), rows_out, cols_out, &py, &px))
                continue;
              const int m = py * cols_out + px;
              const int co = (nb * NT + nt) * 8 + tc_acc_col(lane, r);
              out[static_cast<size_t>(m) * calloc + co] = accr(lane, mt, nt, r);
              ++out_writes[static_cast<size_t>(m) * calloc + co];
            }
    }
  double err = 0;
  bool once = true;
  for (int m = 0; m < pixels; ++m)
    for (int co = 0; co < calloc; ++co) {
      const int py = m / cols_out, px = m % cols_out;
      double ref = 0;
      if (co < cout)
        for (int ci = 0; ci < cin; ++ci)
          for (int tap = 0; tap < 9; ++tap)
            ref += w[(static_cast<size_t>(co) * cin + ci) * 9 + tap] *
                   plane[at(py + tap / 3, px + tap % 3) + ci];
      err = std::max(err, std::abs(ref - out[static_cast<size_t>(m) * calloc + co]));
      once = once && out_writes[static_cast<size_t>(m) * calloc + co] == 1;
    }
  check(once, "tc epilogue writes each (pixel, channel) once: " + what);
  check(err < 1e-9, "tc fragment emulation == direct conv (err " + std::to_string(err) + "): " + what);
}

// tc_order_pixel (both orders): every pixel of the plane is exactly one real slot; an idle slot's
// stand-in is the same for its whole group of 8 or one of the group's real pixels (a read there
// is a broadcast, no extra wavefront); a group of 8 is one row, or one column (not in the tail's
// rows-only order).
void test_tc_order() {
  bool bijective = true, standins = true, groups = true;
  std::string where;
  for (bool rows_only : {false, true})
    for (int rows = 1; rows <= 27; ++rows)
      for (int cols = 1; cols <= 75; ++cols) {
        const int slots = tc_order_slots(rows, cols, rows_only);
        std::vector<int> seen(static_cast<size_t>(rows) * cols, 0);
        const int units = static_cast<int>(round_up(slots, kTcWarpPixels));
        for (int g0 = 0; g0 < units; g0 += 8) {
          int ys[8], xs[8];
          bool real[8], any_real = false;
          for (int t = 0; t < 8; ++t) {
            real[t] = tc_order_pixel(g0 + t, rows, cols, &ys[t], &xs[t], rows_only) && g0 + t < slots;
            const bool in_plane = ys[t] >= 0 && ys[t] < rows && xs[t] >= 0 && xs[t] < cols;
            bijective = bijective && in_plane;
            if (real[t] && in_plane) ++seen[static_cast<size_t>(ys[t]) * cols + xs[t]];
            any_real = any_real || real[t];
          }
          bool same_row = true, same_col = true;
          for (int t = 0; t < 8; ++t) {
            if (!real[t]) {
              bool ok = true;
              if (any_real) {
                ok = false;
                for (int u = 0; u < 8; ++u) ok = ok || (real[u] && ys[u] == ys[t] && xs[u] == xs[t]);
              } else {
                ok = ys[t] == ys[0] && xs[t] == xs[0];
              }
              standins = standins && ok;
              continue;
            }
            for (int u = 0; u < 8; ++u)
              if (real[u]) {
                same_row = same_row && ys[u] == ys[t];
                same_col = same_col && xs[u] == xs[t];
              }
          }
          if (!(same_row || (same_col && !rows_only)) && groups) {
            groups = false;
            where = " (plane " + dims(rows, cols) + ", slot " + std::to_string(g0) + ")";
          }
        }
        for (int v : seen) bijective = bijective && v == 1;
        check(slots >= rows * cols && slots % 8 == 0 && slots <= rows * cols + 7 * (rows_only ? rows : 7),
              "tc_order_slots bounds: " + dims(rows, cols));
      }
  check(bijective, "tc_order_pixel: every pixel exactly once, stand-ins inside the plane");
  check(standins, "tc_order_pixel: an idle slot's stand-in is a real pixel of its group or the group's one stand-in");
  check(groups, "tc_order_pixel: a group of 8 is one row or one column" + where);
}

// Bank conflicts of the tensor-core path by the emulator's bank model, for every plane size a
// tile can have (widths 1..72, heights around multiples of 8): each ldmatrix.x4 (4 phases of 8
// lanes, lane l supplying row l % 8 of matrix l / 8) over every m16 tile, tap and k16 step (in
// both orders), the epilogue's pair stores into the next plane, the plane <-> map copies' 16-byte
// chunks and the image load's 16-byte stores are all conflict-free: one wavefront per phase.
// (The tail's staging stores: test_tail_staging.)
void test_tc_plane_banks() {
  bool loads_free = true, stores_free = true, copies_free = true;
  std::string where;
  uint64_t waves[3] = {0, 0, 0}, ideal[3] = {0, 0, 0};
  auto note = [&](int kind, const repsr_emu::SharedCost& cost, bool* flag, const std::string& at) {
    waves[kind] += cost.wavefronts;
    ideal[kind] += cost.ideal;
    if (cost.wavefronts != cost.ideal && *flag) {
      *flag = false;
      where += at;
    }
  };
  for (bool tail : {false, true})
    for (int cin : {3, 16, 32, 48, 64, 96})
    for (int cout : {16, 32, 48, 64})
      for (int cols_out = 1; cols_out <= 72; ++cols_out)
        for (int rows_out : {1, 6, 8, 13}) {
          const int cols_in = cols_out + 2;
          const int slots = tc_order_slots(rows_out, cols_out, tail);
          const int cin_p = tc_channels(cin), in_stride = tc_pixel_stride(cin), in_pitch = tc_row_pitch(cin, cols_in);
          const std::string at = " (cin " + std::to_string(cin) + ", output plane " + dims(rows_out, cols_out) + ")";
          for (int m0 = 0; m0 < slots; m0 += 16) {
            for (int tap = 0; tap < 9; ++tap)
              for (int cc = 0; cc < cin_p / 16; ++cc) {
                repsr_emu::WarpRequest req;
                req.active = 0xffffffffu;
                req.bytes = 16;
                for (int lane = 0; lane < 32; ++lane) {
                  int py, px;
                  tc_order_pixel(m0 + tc_a_row(lane), rows_out, cols_out, &py, &px, tail);
                  req.addr[lane] = static_cast<uint64_t>(
                      2 * ((py + tap / 3) * in_pitch + (px + tap % 3) * in_stride + tc_a_col(lane) + cc * 16));
                }
                note(0, repsr_emu::shared_cost(req), &loads_free, at + " ldmatrix m " + std::to_string(m0));
              }
            for (int nt = 0; nt < tc_channels(cout) / 8 && !tail; ++nt)  // the tail stages: below
              for (int h = 0; h < 2; ++h) {
                repsr_emu::WarpRequest req;
                req.active = 0;
                req.bytes = 4;
                for (int lane = 0; lane < 32; ++lane) {
                  int py, px;
                  if (!tc_order_pixel(m0 + tc_acc_row(lane, 2 * h), rows_out, cols_out, &py, &px)) continue;
                  req.active |= 1u << lane;
                  req.addr[lane] = static_cast<uint64_t>(
                      2 * (tc_pixel_offset(cout, cols_out, py, px) + nt * 8 + tc_acc_col(lane, 0)));
                }
                if (req.active) note(1, repsr_emu::shared_cost(req), &stores_free, at + " epilogue m " + std::to_string(m0));
              }
          }
          if (tail) continue;
          // Copies of a plane of this size with cin channels: map <-> plane chunks, image -> plane.
          const int chunks = cin_p / 8;
          const int items = static_cast<int>(tc_chunk_items(rows_out, cols_out, chunks));
          for (int i0 = 0; i0 < items; i0 += 32) {
            repsr_emu::WarpRequest req;
            req.active = 0;
            req.bytes = 16;
            for (int lane = 0; lane < 32 && i0 + lane < items; ++lane) {
              int slot, chunk, py, px;
              tc_chunk_item(i0 + lane, chunks, &slot, &chunk);
              if (!tc_order_pixel(slot, rows_out, cols_out, &py, &px)) continue;
              req.active |= 1u << lane;
              req.addr[lane] = static_cast<uint64_t>(2 * (tc_pixel_offset(cin, cols_out, py, px) + chunk * 8));
            }
            if (req.active) note(2, repsr_emu::shared_cost(req), &copies_free, at + " map copy item " + std::to_string(i0));
          }
          for (int s0 = 0; s0 < slots; s0 += 32)
            for (int c0 = 0; c0 < cin_p; c0 += 8) {
              repsr_emu::WarpRequest req;
              req.active = 0;
              req.bytes = 16;
              for (int lane = 0; lane < 32 && s0 + lane < slots; ++lane) {
                int py, px;
                if (!tc_order_pixel(s0 + lane, rows_out, cols_out, &py, &px)) continue;
                req.active |= 1u << lane;
                req.addr[lane] = static_cast<uint64_t>(2 * (tc_pixel_offset(cin, cols_out, py, px) + c0));
              }
              if (req.active) note(2, repsr_emu::shared_cost(req), &copies_free, at + " image load slot " + std::to_string(s0));
            }
        }
  std::printf("  tc plane banks (planes 1..13 x 1..72): ldmatrix x%.3f, epilogue stores x%.3f, copies x%.3f\n",
              double(waves[0]) / double(ideal[0]), double(waves[1]) / double(ideal[1]), double(waves[2]) / double(ideal[2]));
  check(loads_free, "tensor-core ldmatrix phases are conflict-free at every plane size and tap" + where);
  check(stores_free, "tensor-core epilogue stores are conflict-free at every plane size" + where);
  check(copies_free, "tensor-core plane copies are conflict-free at every plane size" + where);
}

// Bank conflicts of the float32 kernel's shared accesses by the emulator's bank model
// (f32_plane_layout, f32_item_cols): conv j of a k-layer segment loads 6 rows x 3 taps per item from
// plane j and stores its epilogue into plane j + 1. Conflict-free wherever the output plane's
// height is a multiple of 4 (a partial last row group reads clamped rows; in the reported ratio)
// and: one-layer segments, a width multiple of 4 or >= 32 (items padded to a multiple of 4 from 32
// columns); the first conv of a two-layer segment (its output, the middle plane, is tw + 2 wide:
// items padded to a multiple of 4, the plane's pitch serving its writer), tw a multiple of 32; the
// second conv as a one-layer segment's (the middle plane's pitch serves it first where its warps
// wrap). Loads: in warps inside one channel group (a warp spanning two reads one channel at two
// places that share banks: in the ratio). Stores into a segment's last plane: in every warp (the
// group skew; x2 / x4 tails too), into a middle plane: in warps inside one group. The tail
// read-back in NCHW output order is conflict-free for x2, x3 and x4 wherever a warp stays in one
// output row. Other shapes are reported.
void test_f32_plane_banks() {
  bool loads_free = true, stores_free = true, tail_free = true;
  std::string where;
  uint64_t waves[2] = {0, 0}, ideal[2] = {0, 0};  // [conflict-free expected]
  const auto cost_of = [](const repsr_emu::WarpRequest& req) { return repsr_emu::shared_cost(req); };
  const auto conv = [&](int k, int j, int th, int tw, int cout, int scale, bool loads_fixable, bool stores_fixable) {
    const F32PlaneLayout lin = f32_plane_layout(k, j, th, tw);
    const F32PlaneLayout lout = f32_plane_layout(k, j + 1, th, tw, j + 1 == k ? scale : 0);
    const Plane pin = segment_plane(k, j, th, tw, 0, 0), pout = segment_plane(k, j + 1, th, tw, 0, 0);
    const int rows_out = pout.rows, cols_out = pout.cols, item_cols = f32_item_cols(cols_out);
    const int row_groups = static_cast<int>(ceil_div(rows_out, kF32Rows));
    const int64_t items = f32_items(cout, rows_out, cols_out), per_group = int64_t{row_groups} * item_cols;
    const bool full_groups = rows_out % kF32Rows == 0;
    const bool stores_across = j + 1 == k;  // the last plane's group skew
    const std::string shape = " k " + std::to_string(k) + " conv " + std::to_string(j) + ", output " +
                              std::to_string(rows_out) + "x" + std::to_string(cols_out) + ", " +
                              std::to_string(cout) + " channels)";
    for (int64_t w0 = 0; w0 < items; w0 += 32) {
      const bool one_group = w0 / per_group == std::min(w0 + 31, items - 1) / per_group;
      for (int r = 0; r < kF32Rows + 2; ++r)
        for (int kx = 0; kx < 3; ++kx) {
          repsr_emu::WarpRequest req;
          req.active = 0;
          for (int lane = 0; lane < 32; ++lane) {
            const int64_t item = w0 + lane;
            if (item >= items) continue;
            req.active |= 1u << lane;
            const int x = std::min(static_cast<int>(item % item_cols), cols_out - 1);
            const int rest = static_cast<int>(item / item_cols), y0 = (rest % row_groups) * kF32Rows;
            const int off = std::min(y0 * lin.pitch + x + r * lin.pitch, (pin.rows - 1) * lin.pitch + x) + kx;
            req.addr[lane] = static_cast<uint64_t>(4 * off);  // every lane: the same input channel
          }
          const repsr_emu::SharedCost c = cost_of(req);
          const bool expect = loads_fixable && full_groups;
          waves[expect] += c.wavefronts;
          ideal[expect] += c.ideal;
          if (expect && one_group && c.wavefronts != c.ideal && loads_free) {
            loads_free = false;
            where += " (loads:" + shape;
          }
        }
      for (int r = 0; r < kF32Rows; ++r) {  // epilogue stores, channel co0 + 0 of the item
        repsr_emu::WarpRequest req;
        req.active = 0;
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t item = w0 + lane;
          if (item >= items) continue;
          const int x = static_cast<int>(item % item_cols), rest = static_cast<int>(item / item_cols);
          const int y = (rest % row_groups) * kF32Rows + r, co = (rest / row_groups) * kF32Couts;
          if (y >= rows_out || x >= cols_out) continue;
          req.active |= 1u << lane;
          req.addr[lane] = static_cast<uint64_t>(4 * (lout.offset(co) + y * lout.pitch + x));
        }
        if (!req.active) continue;
        const repsr_emu::SharedCost c = cost_of(req);
        if (stores_fixable && full_groups && (one_group || stores_across) && c.wavefronts != c.ideal &&
            stores_free) {
          stores_free = false;
          where += " (stores:" + shape;
        }
      }
    }
  };
  for (int cout : {16, 48, 64})
    for (int tw = 1; tw <= 72; ++tw)
      for (int th : {4, 6, 8, 12, 16, 24}) {
        const bool padded_or_multiple = tw % 4 == 0 || tw >= 32;  // f32_item_cols pads from 32 columns
        conv(1, 0, th, tw, cout, 0, padded_or_multiple, padded_or_multiple);
        conv(2, 0, th, tw, cout, 0, tw % 32 == 0, tw % 32 == 0);
        conv(2, 1, th, tw, cout, 0, padded_or_multiple, padded_or_multiple);
      }
  for (int tw = 1; tw <= 72; ++tw)
    for (int th : {4, 6, 8, 12, 16, 24}) {
      const bool padded_or_multiple = tw % 4 == 0 || tw >= 32;
      conv(1, 0, th, tw, 48, 4, padded_or_multiple, padded_or_multiple);  // x4 RGB tails
      conv(1, 0, th, tw, 12, 2, padded_or_multiple, padded_or_multiple);  // x2
    }
  for (int r : {2, 3, 4})
    for (int tw = 1; tw <= 40; ++tw)
      for (int th : {3, 8, 16}) {
        const F32PlaneLayout l = f32_plane_layout(1, 1, th, tw, r);
        const int row_len = tw * r;
        for (int c = 0; c < 3; ++c)
          for (int oy = 0; oy < th * r; ++oy)
            for (int ox0 = 0; ox0 + 32 <= row_len; ox0 += 32) {  // warps inside one output row
              repsr_emu::WarpRequest req;
              req.active = 0xffffffffu;
              for (int lane = 0; lane < 32; ++lane) {
                const int ox = ox0 + lane, y = oy / r, x = ox / r;
                const int co = (c * r + oy % r) * r + ox % r;
                req.addr[lane] = static_cast<uint64_t>(4 * (l.offset(co) + y * l.pitch + x));
              }
              const repsr_emu::SharedCost cost = cost_of(req);
              if (cost.wavefronts != cost.ideal && tail_free) {
                tail_free = false;
                where += " (tail: x" + std::to_string(r) + ", tile width " + std::to_string(tw) + ")";
              }
            }
      }
  std::printf("  f32 plane banks: conv loads x%.3f (shapes expected conflict-free), x%.3f (others)\n",
              double(waves[1]) / double(ideal[1]), double(waves[0]) / double(ideal[0]));
  check(loads_free, "float32 conv loads conflict-free (one- and two-layer segments, shapes above)" + where);
  check(stores_free, "float32 epilogue stores conflict-free (one- and two-layer segments, shapes above)" + where);
  check(tail_free, "float32 tail read-back conflict-free in NCHW order for x2 / x3 / x4" + where);
  // The layout itself: rows padded to the rule, never shorter than the plane, at most 7 floats.
  bool layout_ok = true;
  for (int cols = 1; cols <= 80; ++cols)
    for (int item = std::max(1, cols - 2); item <= cols; item += 2) {
      const int pitch = f32_row_pitch(cols, item);
      layout_ok = layout_ok && pitch >= cols && pitch < cols + 8 &&
                  (item % 32 == 0 || item % kF32Rows != 0 ? pitch == cols : (kF32Rows * pitch - item) % 32 == 0);
    }
  check(layout_ok, "f32_row_pitch: >= the plane width, < 8 floats of padding, 4 pitch = width (mod 32) where it can");
  // Channel and group strides: at most 31 floats of padding each; a plane a conv reads has uniform
  // strides (its loop steps by one channel stride); a skewed last plane steps from group to group
  // by its writer's bank step.
  bool strides_ok = true;
  int skewed = 0;
  for (int k = 1; k <= 2; ++k)
    for (int j = 0; j <= k; ++j)
      for (int th : {3, 8, 12, 16})
        for (int tw = 1; tw <= 70; ++tw)
          for (int scale : {0, 2, 3, 4}) {
            if (scale != 0 && j != k) continue;
            const F32PlaneLayout l = f32_plane_layout(k, j, th, tw, scale);
            const Plane p = segment_plane(k, j, th, tw, 0, 0);
            const int dense = p.rows * l.pitch, uniform = kF32Couts * l.channel_stride;
            strides_ok = strides_ok && l.channel_stride >= dense && l.channel_stride < dense + 32 &&
                         l.group_stride >= uniform && l.group_stride < uniform + 32 &&
                         (j == k || l.group_stride == uniform) && l.bytes(3) == int64_t{4} * 3 * l.channel_stride &&
                         l.bytes(16) == int64_t{4} * (l.group_stride + uniform);
            if (l.group_stride != uniform) {
              ++skewed;
              strides_ok = strides_ok && scale != 3 && l.group_stride % 32 == f32_group_bank_step(p.rows, p.cols);
            }
          }
  check(strides_ok && skewed > 0,
        "f32_plane_layout: channel / group strides padded by < 32 floats, uniform where a conv reads, the "
        "last plane's groups a bank step apart (" + std::to_string(skewed) + " skewed)");
}

void test_channel_layouts() {
  bool ok = true;
  for (int c = 1; c <= 200; ++c) {
    const int cp = tc_channels(c), nt = tc_warp_ntiles(c), ca = tc_cout_alloc(c);
    ok = ok && cp % 16 == 0 && cp >= c && cp < c + 16;
    // Pixel stride: an odd multiple of 16 bytes (conflict-free ldmatrix phases).
    ok = ok && (tc_pixel_stride(c) * 2) % 16 == 0 && ((tc_pixel_stride(c) * 2 / 16) % 2) == 1;
    ok = ok && nt % 2 == 0 && nt >= 2 && nt <= kTcMaxNTiles && ca % (8 * nt) == 0 && ca >= cp;
    ok = ok && (cp > 64 || ca == cp);
    ok = ok && f32_cout_alloc(c) % kF32Couts == 0 && f32_cout_alloc(c) >= c;
  }
  check(ok, "channel padding, pixel stride and warp n-tiles for 1..200 channels");
  check(tc_warp_ntiles(48) == 6 && tc_warp_ntiles(12) == 2 && tc_warp_ntiles(27) == 4 &&
            tc_warp_ntiles(64) == 8 && tc_warp_ntiles(96) == 8 && tc_cout_alloc(96) == 128,
        "warp n-tiles of typical tails and bodies");
  // f32 packed layout covers [ci][tap][co] densely.
  check(f32_weight_offset(2, 8, 7, 16) == (2 * 9 + 8) * 16 + 7 && f32_weight_elements(3, 13) == 9 * 3 * 16,
        "f32 weight layout");
  check(f32_items(13, 9, 5) == 2 * 3 * 5, "f32 items: channel groups x row groups x cols");
  check(f32_items(13, 9, 66) == 2 * 3 * 68 && f32_items(8, 4, 31) == 31 && f32_items(8, 4, 64) == 64,
        "f32 items: columns padded to a multiple of 4 from 32 columns");
  bool item_cols_ok = true;
  for (int cols = 1; cols <= 200; ++cols) {
    const int w = f32_item_cols(cols);
    item_cols_ok = item_cols_ok && w >= cols && w < cols + kF32Rows && (cols < 32 ? w == cols : w % kF32Rows == 0);
  }
  check(item_cols_ok, "f32_item_cols: the width, or from 32 columns the next multiple of 4");
}

// ---- Shared memory and planner ------------------------------------------------------------------

void test_smem_layout() {
  bool ok = true;
  for (Path path : {Path::kFp32, Path::kTensorCore})
    for (int k = 1; k <= 6; ++k)
      for (bool tail : {false, true})
        for (int th : {1, 5, 16}) {
          std::vector<int> widths;
          for (int j = 0; j <= k; ++j) widths.push_back(3 + 7 * j);
          const SmemLayout s = segment_smem(path, widths.data(), k, tail, th, th + 3);
          ok = ok && s.offset[0] == 0 && s.offset[1] % kSmemAlign == 0 && s.total % kSmemAlign == 0;
          const int last = tail ? k - 1 : k;
          for (int j = 0; j <= last; ++j) {
            const int64_t b = plane_bytes(path, widths[j], k, j, th, th + 3);
            const int64_t begin = s.offset[j % 2];
            const int64_t end = j % 2 == 0 ? s.offset[1] : s.total;
            ok = ok && begin + b <= end;  // plane j fits its buffer, buffers disjoint
          }
        }
  check(ok, "segment shared-memory buffers hold every plane and do not overlap");
  // Concrete numbers: 4 x 16 channels fp16, 32x32 tile, tail 12: plane 0 (40x40, 3 -> 16+8
  // elements per pixel, even widths: rows padded by one 16-byte unit = 8 elements) ...
  const int widths[] = {3, 16, 16, 16, 12};
  const SmemLayout s = segment_smem(Path::kTensorCore, widths, 4, true, 32, 32);
  const int64_t b0 = std::max<int64_t>(40 * (40 * 24 + 8) * 2, 36 * (36 * 24 + 8) * 2);
  const int64_t b1 = std::max<int64_t>(38 * (38 * 24 + 8) * 2, 34 * (34 * 24 + 8) * 2);
  check(s.offset[1] == round_up(b0, kSmemAlign) && s.total == s.offset[1] + round_up(b1, kSmemAlign),
        "segment_smem for a 4-layer fp16 segment");
}

// The tail staging (tiling.cuh, "Tail staging"): every output element of a tile has its own,
// aligned place inside the buffer; rows hold consecutive output elements (the writer copies them
// in order); the tensor-core epilogue's fragment stores hit no bank twice for x4 / x2 RGB.
void test_tail_staging() {
  bool places = true, order = true, fits = true;
  for (int r : {1, 2, 3, 4})
    for (int out_c : {1, 3})
      for (int elem : {1, 2, 4})
        for (int th : {1, 5, 16})
          for (int tw : {1, 7, 32}) {
            const TailStage t = tail_stage(th, tw, r, out_c, elem);
            fits = fits && t.bytes() == tail_stage_bytes(th, tw, r, out_c, elem) && t.pitch % 4 == 0 &&
                   t.channel_pitch >= t.rows * t.pitch;
            std::vector<char> used(static_cast<size_t>(t.bytes()), 0);
            for (int co = 0; co < out_c * r * r; ++co)
              for (int py = 0; py < th; ++py)
                for (int px = 0; px < tw; ++px) {
                  const int64_t off = tail_stage_offset(t, r, elem, co, py, px);
                  places = places && off >= 0 && off % elem == 0 && off + elem <= t.bytes();
                  if (!places) break;
                  for (int b = 0; b < elem; ++b) {
                    places = places && !used[off + b];
                    used[off + b] = 1;
                  }
                  // The next output element along the row is elem bytes further (the writer's
                  // addressing), and the row below is one pitch down.
                  const ShuffleTarget st = shuffle_target(co, r);
                  if (st.j + 1 < r) order = order && tail_stage_offset(t, r, elem, co + 1, py, px) == off + elem;
                  if (st.i + 1 < r) order = order && tail_stage_offset(t, r, elem, co + r, py, px) == off + t.pitch;
                }
          }
  check(places, "tail staging: every output element has its own aligned bytes inside the buffer");
  check(order, "tail staging: rows hold consecutive output elements, one pitch apart");
  check(fits, "tail staging: whole-word pitches, channel blocks hold their rows");

  // Fragment stores of the tensor-core tail (channel-major output): lane l holds the pixel of slot
  // l / 4 of a group of 8 of the tail's rows-only order (tc_order_pixel) and channels
  // 2 (l % 4) + {0, 1} of each n8 tile; one store per channel; idle slots store nothing.
  bool conflict_free = true;
  std::string where;
  for (int r : {2, 4})
    for (int elem : {1, 2, 4})
      for (int tw : {5, 8, 12, 16, 28, 32, 64}) {
        const int th = 3;
        const TailStage t = tail_stage(th, tw, r, 3, elem);
        for (int g0 = 0; g0 < tc_order_slots(th, tw, true); g0 += 8)
          for (int nt = 0; nt < 3 * r * r / 8; ++nt)
            for (int half = 0; half < 2; ++half) {
              repsr_emu::WarpRequest req;
              req.active = 0;
              req.bytes = elem;
              for (int lane = 0; lane < 32; ++lane) {
                const int co = nt * 8 + tc_acc_col(lane, half);
                int py, px;
                if (!tc_order_pixel(g0 + lane / 4, th, tw, &py, &px, true)) continue;
                req.active |= 1u << lane;
                req.addr[lane] = static_cast<uint64_t>(tail_stage_offset(t, r, elem, co, py, px));
              }
              const repsr_emu::SharedCost cost = repsr_emu::shared_cost(req);
              if (cost.wavefronts != cost.ideal) {
                conflict_free = false;
                where = " (r " + std::to_string(r) + ", " + std::to_string(elem) + "-byte, tw " + std::to_string(tw) +
                        ": " + std::to_string(cost.wavefronts) + " wavefronts for " + std::to_string(cost.ideal) + ")";
              }
            }
      }
  check(conflict_free, "tail staging: tensor-core fragment stores are free of bank conflicts" + where);

  // segment_smem puts the staging into the buffer of plane k and keeps it clear of the other.
  bool holds = true;
  for (int k = 1; k <= 4; ++k)
    for (int th : {4, 16, 32}) {
      std::vector<int> widths;
      for (int j = 0; j < k; ++j) widths.push_back(j == 0 ? 3 : 16);
      widths.push_back(48);
      for (int elem : {1, 2, 4}) {
        const SmemLayout s = segment_smem(Path::kTensorCore, widths.data(), k, true, th, th, 4, elem);
        const int64_t begin = s.offset[k % 2], end = k % 2 == 0 ? s.offset[1] : s.total;
        holds = holds && begin + tail_stage_bytes(th, th, 4, 3, elem) <= end;
      }
    }
  check(holds, "segment_smem: the tail staging fits the buffer of plane k");
}

ChainShape shape(Path path, std::vector<int> widths, int64_t n, int64_t h, int64_t w, int scale) {
  ChainShape s;
  s.path = path;
  s.widths = std::move(widths);
  s.n = n;
  s.h = h;
  s.w = w;
  s.scale = scale;
  s.in_bytes = path == Path::kFp32 ? 4 : 2;
  s.out_bytes = s.in_bytes;
  s.residual = true;
  return s;
}

std::vector<int> body(int in, int c, int layers, int tail) {
  std::vector<int> w = {in};
  for (int l = 0; l + 1 < layers; ++l) w.push_back(c);
  w.push_back(tail);
  return w;
}

bool plan_is_valid(const DeviceModel& d, const ChainShape& s, const ChainPlan& p, std::string* why) {
  if (p.error != nullptr) {
    *why = p.error;
    return false;
  }
  int expect = 0;
  for (const SegmentPlan& seg : p.segments) {
    if (seg.first != expect || seg.last <= seg.first) return *why = "segments not in order", false;
    if (seg.last - seg.first > kMaxSegmentLayers) return *why = "segment too long", false;
    if (seg.smem.total > d.smem_per_block) return *why = "over the shared-memory budget", false;
    if (seg.smem.total != segment_smem_bytes(s, seg.first, seg.last, seg.th, seg.tw))
      return *why = "smem mismatch", false;
    const TileGrid g = make_tile_grid(s.n, s.h, s.w, seg.th, seg.tw);
    if (g.tiles_x != seg.grid.tiles_x || g.tiles_y != seg.grid.tiles_y || g.n != seg.grid.n)
      return *why = "grid mismatch", false;
    if (seg.th < 1 || seg.tw < 1 || seg.th > std::max<int64_t>(s.h, 1) || seg.tw > std::max<int64_t>(s.w, 1))
      return *why = "tile outside [1, extent]", false;
    if (grid_blocks(seg.grid) > 0x7fffffffLL) return *why = "grid too large", false;
    expect = seg.last;
  }
  if (expect != s.num_layers()) return *why = "layers not all covered", false;
  return true;
}

std::string describe(const ChainPlan& p) {
  std::string s;
  for (const SegmentPlan& seg : p.segments)
    s += " [" + std::to_string(seg.first) + "," + std::to_string(seg.last) + ")@" + dims(seg.th, seg.tw) +
         "/" + std::to_string(seg.smem.total / 1024) + "K";
  return s;
}

void test_planner() {
  DeviceModel h100;  // defaults: H100-like
  DeviceModel a100 = h100;
  a100.sm_count = 108;
  a100.smem_per_block = 163 * 1024;
  a100.smem_per_sm = 164 * 1024;
  DeviceModel ada = h100;
  ada.sm_count = 128;
  ada.smem_per_block = 99 * 1024;
  ada.smem_per_sm = 100 * 1024;
  DeviceModel small = h100;
  small.smem_per_block = 48 * 1024;
  small.smem_per_sm = 64 * 1024;

  const std::vector<std::vector<int>> nets = {
      body(3, 16, 4, 48), body(3, 32, 4, 48), body(3, 32, 10, 48), body(3, 64, 16, 48),
      body(3, 8, 16, 27), body(1, 13, 5, 4),  body(3, 24, 2, 12),  {3, 12},
      body(4, 48, 6, 64), body(3, 128, 3, 48)};
  struct Img {
    int64_t n, h, w;
  };
  const Img imgs[] = {{1, 1, 1}, {1, 1, 17}, {2, 7, 3}, {1, 180, 320}, {4, 64, 64}, {1, 2160, 3840}};
  int valid = 0, total = 0;
  for (const DeviceModel* d : {&h100, &a100, &ada, &small})
    for (Path path : {Path::kFp32, Path::kTensorCore})
      for (const std::vector<int>& widths : nets)
        for (const Img& im : imgs) {
          const ChainShape s = shape(path, widths, im.n, im.h, im.w, 2);
          const ChainPlan p = plan_chain(*d, s);
          std::string why;
          ++total;
          if (plan_is_valid(*d, s, p, &why)) {
            ++valid;
          } else {
            check(false, "plan valid (" + why + "): layers " + std::to_string(s.num_layers()) +
                             " c " + std::to_string(widths[1]) + " " + dims(im.h, im.w) +
                             " smem " + std::to_string(d->smem_per_block));
          }
        }
  check(valid == total, "every plan covers its layers in order within the budget (" +
                            std::to_string(valid) + "/" + std::to_string(total) + ")");

  // Small nets fit on chip: on tensor cores (where a boundary round trip costs more than the
  // halo recompute) one segment, the whole chain fused. float32 CUDA cores are ~7x slower per
  // MAC, which makes halo recompute dear and splits a candidate: just print that plan.
  for (const Img& im : {Img{1, 180, 320}, Img{1, 720, 1280}, Img{8, 64, 64}}) {
    const ChainPlan p = plan_chain(h100, shape(Path::kTensorCore, body(3, 16, 4, 48), im.n, im.h, im.w, 4));
    check(p.error == nullptr && p.segments.size() == 1,
          "M4C16 tc is one segment (" + dims(im.h, im.w) + "):" + describe(p));
    const ChainPlan q = plan_chain(h100, shape(Path::kFp32, body(3, 16, 4, 48), im.n, im.h, im.w, 4));
    check(q.error == nullptr && q.segments.size() <= 3, "M4C16 fp32 plan (" + dims(im.h, im.w) + ")");
    std::printf("  plan M4C16 fp32 %s:%s\n", dims(im.h, im.w).c_str(), describe(q).c_str());
  }
  {
    const ChainPlan p = plan_chain(h100, shape(Path::kTensorCore, body(3, 32, 4, 48), 1, 720, 1280, 4));
    check(p.error == nullptr && p.segments.size() <= 3, "M4C32 fp16 fuses its 6 layers into at most 3 segments:" + describe(p));
    std::printf("  plan M4C32 tc 720x1280:%s\n", describe(p).c_str());
  }
  // A deep wide net cannot be fused whole: several segments, each within the budget.
  for (const DeviceModel* d : {&h100, &ada}) {
    for (Path path : {Path::kFp32, Path::kTensorCore}) {
      const ChainShape s = shape(path, body(3, 64, 16, 48), 1, 720, 1280, 4);
      const ChainPlan p = plan_chain(*d, s);
      std::string why;
      check(plan_is_valid(*d, s, p, &why) && p.segments.size() > 1,
            std::string("M16C64 splits (") + (path == Path::kFp32 ? "fp32" : "tc") + ", smem " +
                std::to_string(d->smem_per_block / 1024) + "K):" + describe(p));
      std::printf("  plan M16C64 %s smem %lldK:%s cost %.3f ms\n", path == Path::kFp32 ? "fp32" : "tc  ",
                  static_cast<long long>(d->smem_per_block / 1024), describe(p).c_str(), p.cost * 1e3);
    }
  }
  // The chosen plan is no worse than the extremes (all layers separate; one segment when it fits).
  for (Path path : {Path::kFp32, Path::kTensorCore})
    for (const std::vector<int>& widths : nets) {
      const ChainShape s = shape(path, widths, 1, 360, 640, 2);
      const ChainPlan p = plan_chain(h100, s);
      double separate = 0;
      bool feasible = true;
      for (int l = 0; l < s.num_layers(); ++l) {
        const SegmentPlan seg = best_segment(h100, s, l, l + 1);
        feasible = feasible && seg.cost >= 0;
        separate += seg.cost;
      }
      const SegmentPlan whole = best_segment(h100, s, 0, s.num_layers());
      check(p.error == nullptr && feasible && p.cost <= separate * (1 + 1e-12),
            "plan no worse than one launch per layer");
      check(whole.cost < 0 || p.cost <= whole.cost * (1 + 1e-12), "plan no worse than one segment");
    }
  // Direction of the model: with free memory traffic and launches, nothing is worth a halo
  // (one layer per segment); with very slow memory, a deep narrow net fuses into long segments.
  {
    DeviceModel fast_mem = h100;
    fast_mem.bytes_per_s = 1e30;
    fast_mem.launch_s = 0;
    const ChainPlan p = plan_chain(fast_mem, shape(Path::kTensorCore, body(3, 64, 8, 48), 1, 720, 1280, 4));
    check(p.segments.size() == 8, "free memory traffic: one layer per segment:" + describe(p));
    DeviceModel slow_mem = h100;
    slow_mem.bytes_per_s = 1e9;
    const ChainPlan q = plan_chain(slow_mem, shape(Path::kTensorCore, body(3, 16, 8, 48), 1, 720, 1280, 4));
    check(q.segments.size() <= 2, "slow memory: deep narrow net fused:" + describe(q));
  }
  // The other policies: as few segments as fit (a deep narrow net fused whole, where the cost
  // model splits it), and one layer per segment; both valid plans, never cheaper than the cost's.
  {
    const ChainShape s = shape(Path::kTensorCore, body(3, 8, 16, 27), 1, 10, 9, 3);
    const ChainPlan cost = plan_chain(h100, s);
    const ChainPlan fewest = plan_chain(h100, s, PlanPolicy::kFewestSegments);
    const ChainPlan layer = plan_chain(h100, s, PlanPolicy::kOneLayer);
    std::string why;
    check(plan_is_valid(h100, s, fewest, &why) && fewest.segments.size() == 1,
          "fewest: 16 x 8 channels in one segment:" + describe(fewest));
    check(plan_is_valid(h100, s, layer, &why) && layer.segments.size() == 16,
          "layer: one segment per layer:" + describe(layer));
    check(cost.cost <= fewest.cost * (1 + 1e-12) && cost.cost <= layer.cost * (1 + 1e-12),
          "the cost policy's plan is the cheapest of the three");
    const ChainShape deep = shape(Path::kTensorCore, body(3, 64, 16, 48), 1, 720, 1280, 4);
    const ChainPlan f = plan_chain(h100, deep, PlanPolicy::kFewestSegments);
    check(plan_is_valid(h100, deep, f, &why) && f.segments.size() <= plan_chain(h100, deep).segments.size(),
          "fewest never has more segments than cost:" + describe(f));
  }
  // Too many channels for any tile: a clear error.
  {
    DeviceModel tiny = h100;
    tiny.smem_per_block = 1024;
    const ChainPlan p = plan_chain(tiny, shape(Path::kFp32, body(3, 64, 3, 12), 1, 32, 32, 2));
    check(p.error != nullptr && p.segments.empty(), "no tile fits: error");
  }
  // An empty image has no plan (the launcher returns before planning).
  check(plan_chain(h100, shape(Path::kFp32, body(3, 8, 2, 12), 0, 5, 5, 2)).error != nullptr,
        "N = 0: no plan");
  // Planning time (host, per shape; the launcher caches plans).
  const auto t0 = std::chrono::steady_clock::now();
  const ChainPlan big = plan_chain(h100, shape(Path::kTensorCore, body(3, 64, 16, 48), 1, 2160, 3840, 4));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  planning M16C64 at 2160x3840 took %.2f ms:%s\n", ms, describe(big).c_str());
  check(ms < 200, "planning takes well under a second");
}

void test_workspace() {
  DeviceModel d;
  for (Path path : {Path::kFp32, Path::kTensorCore}) {
    const ChainShape s = shape(path, body(3, 64, 16, 48), 4, 2160, 3840, 4);
    const ChainPlan p = plan_chain(d, s);
    const WorkspaceLayout ws = workspace_layout(s, p);
    std::vector<std::pair<int64_t, int64_t>> regions;
    for (int l = 0; l < s.num_layers(); ++l) {
      const int cin = s.widths[l], cout = s.widths[l + 1];
      const int64_t wb = path == Path::kFp32 ? f32_weight_elements(cin, cout) * 4 : tc_weight_elements(cin, cout) * 2;
      regions.push_back({ws.weight[l], wb});
      regions.push_back({ws.bias[l], 4 * cout_alloc(path, cout)});
      regions.push_back({ws.slope[l], 4 * cout_alloc(path, cout)});
    }
    const int boundaries = static_cast<int>(p.segments.size()) - 1;
    if (boundaries >= 1) regions.push_back({ws.map[0], ws.map_bytes});
    if (boundaries >= 2) regions.push_back({ws.map[1], ws.map_bytes});
    std::sort(regions.begin(), regions.end());
    bool ok = true;
    for (size_t i = 0; i < regions.size(); ++i) {
      ok = ok && regions[i].first % kWorkspaceAlign == 0 && regions[i].first + regions[i].second <= ws.total;
      if (i + 1 < regions.size()) ok = ok && regions[i].first + regions[i].second <= regions[i + 1].first;
    }
    check(ok, "workspace regions aligned, disjoint, inside the total");
    int64_t widest = 0;
    for (int b = 0; b < boundaries; ++b)
      widest = std::max<int64_t>(widest, map_channels(path, s.widths[p.segments[b].last]));
    check(boundaries < 1 || ws.map_bytes == int64_t{4} * 2160 * 3840 * widest * compute_bytes(path),
          "boundary map bytes (64-bit, > 2 GiB for a 4K batch)");
    check(boundaries < 1 || ws.map_bytes > (int64_t{1} << 31), "4K batch map exceeds 2^31 bytes");
  }
  // One segment: no map.
  const ChainShape s = shape(Path::kTensorCore, body(3, 16, 4, 48), 1, 64, 64, 4);
  const ChainPlan p = plan_chain(d, s);
  const WorkspaceLayout ws = workspace_layout(s, p);
  check(p.segments.size() == 1 && ws.map_bytes == 0 && ws.total > 0, "single segment: weights only");
}

}  // namespace

int main() {
  test_basic_arithmetic();
  const int64_t sizes[][2] = {{1, 1}, {1, 17}, {17, 1}, {7, 3}, {13, 11}, {37, 71}, {64, 64}};
  const int tiles[][2] = {{1, 1}, {1, 17}, {4, 4}, {8, 16}, {16, 16}, {24, 40}, {128, 128}};
  for (const auto& s : sizes)
    for (const auto& t : tiles)
      for (int64_t n : {1, 3}) test_tile_cover(n, s[0], s[1], t[0], t[1]);
  test_large_grid(1, 2160, 3840, 24, 32);
  test_large_grid(16, 2160, 3840, 1, 1);  // 132 M blocks
  test_large_grid(3, 100000, 70000, 7, 9);
  test_planes();
  test_offsets();
  test_shuffle();
  test_channel_layouts();
  for (int cin : {1, 3, 13, 16, 24, 64, 70})
    for (int cout : {1, 8, 12, 27, 48, 64, 96})
      test_tc_fragments(cin, cout, cin == 64 ? 3 : 5, cout == 96 ? 2 : 7);
  test_tc_fragments(16, 16, 1, 1);
  test_tc_fragments(8, 32, 1, 17);
  test_tc_fragments(16, 32, 11, 21);  // body columns and a 5-column strip, a partial last band
  test_tc_fragments(32, 16, 9, 30);
  test_tc_order();
  test_tc_plane_banks();
  test_f32_plane_banks();
  test_simulation();
  test_smem_layout();
  test_tail_staging();
  test_planner();
  test_workspace();
  return repsr_test::report();
}
