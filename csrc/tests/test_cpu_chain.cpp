// Tests repsr::CpuChain against an independent double-precision reference (per-layer full-image
// conv with zero padding, pixel shuffle, residual, clamp) on random networks, and repsr::validate.
// Every case runs on every ISA variant this machine has (REPSR_CPU_MAX_ISA caps the selection).
//
// Tolerances. The kernel accumulates in float32: one layer's dot product of K = 9 * cin terms
// carries a relative rounding error of about sqrt(K) * 2^-24 (1.4e-6 at cin = 64, random-walk
// growth), and the errors of up to 16 layers add up. Hence, for float32 outputs:
//   ||out - ref|| / ||ref|| <= 1e-5    and    max |out - ref| <= 1e-5 * max(1, max |ref|).
// The largest errors measured over these cases are 5.4e-7 (relative L2) and 1.9e-6 (max abs, at
// max |ref| = 2.6), so the bounds leave > 10x headroom, while any indexing or padding bug moves
// outputs by O(1). For uint8 outputs, the reference is quantized exactly (clamp, * 255, round
// half to even); the kernel may differ by one level only where the scaled reference lies within
// 1e-3 of a rounding boundary (x.5).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fused_sr.h"
#include "tests/check.h"
#include "tests/reference_chain.h"

namespace {

using namespace repsr_test;

// ---- Strided images -----------------------------------------------------------------------------

enum class Layout { kNchw, kChannelsLast, kGapped };
const char* layout_name(Layout l) {
  return l == Layout::kNchw ? "nchw" : l == Layout::kChannelsLast ? "channels_last" : "gapped";
}

// An image in a buffer of its dtype; bytes outside the image hold a sentinel.
struct Image {
  repsr::ImageRef ref;
  std::vector<float> f32;
  std::vector<uint8_t> u8;
  std::vector<char> is_element;  // per buffer slot: part of the image?
};

constexpr uint8_t kU8Sentinel = 77;

Image make_image(int64_t n, int64_t c, int64_t h, int64_t w, Layout layout, repsr::DType dtype) {
  Image img;
  repsr::ImageRef& r = img.ref;
  r.dtype = dtype;
  r.n = n, r.c = c, r.h = h, r.w = w;
  switch (layout) {
    case Layout::kNchw:
      r.stride_w = 1, r.stride_h = w, r.stride_c = h * w, r.stride_n = c * h * w;
      break;
    case Layout::kChannelsLast:  // also the HWC layout of uint8 images
      r.stride_c = 1, r.stride_w = c, r.stride_h = w * c, r.stride_n = h * w * c;
      break;
    case Layout::kGapped:  // a strided view: every stride leaves a gap
      r.stride_w = 2, r.stride_h = 2 * w + 3, r.stride_c = h * r.stride_h + 5,
      r.stride_n = c * r.stride_c + 7;
      break;
  }
  const int64_t size = std::max<int64_t>(1, n * r.stride_n + 8);
  img.is_element.assign(static_cast<size_t>(size), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          img.is_element[i * r.stride_n + ch * r.stride_c + y * r.stride_h + x * r.stride_w] = 1;
  if (dtype == repsr::DType::kFloat32) {
    img.f32.assign(static_cast<size_t>(size), std::nanf(""));  // reading a gap poisons the result
    r.data = img.f32.data();
  } else {
    img.u8.assign(static_cast<size_t>(size), kU8Sentinel);
    r.data = img.u8.data();
  }
  return img;
}

int64_t offset(const repsr::ImageRef& r, int64_t i, int64_t c, int64_t y, int64_t x) {
  return i * r.stride_n + c * r.stride_c + y * r.stride_h + x * r.stride_w;
}

// Fills the image with random values in (0, 1] (uint8: 0..255) and returns them as the kernel
// reads them.
Tensor fill_random(Image& img, std::mt19937& rng) {
  const repsr::ImageRef& r = img.ref;
  Tensor t = make_tensor(r.n, r.c, r.h, r.w);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t c = 0; c < r.c; ++c)
      for (int64_t y = 0; y < r.h; ++y)
        for (int64_t x = 0; x < r.w; ++x) {
          const int64_t o = offset(r, i, c, y, x);
          if (r.dtype == repsr::DType::kFloat32) {
            img.f32[o] = 1.0f - unit(rng);
            t.at(i, c, y, x) = img.f32[o];
          } else {
            img.u8[o] = static_cast<uint8_t>(byte(rng));
            t.at(i, c, y, x) = img.u8[o] / 255.0;
          }
        }
  return t;
}

// ---- Comparison ---------------------------------------------------------------------------------

// Returns an empty string when `out` matches `ref` within the tolerances (file comment) and the
// gaps between its elements are untouched, else what went wrong.
double g_worst_rel = 0.0;  // the largest float32 relative L2 error seen (printed at the end)

std::string compare(const Image& out, const Tensor& ref) {
  const repsr::ImageRef& r = out.ref;
  for (size_t o = 0; o < out.is_element.size(); ++o) {
    if (out.is_element[o]) continue;
    const bool untouched =
        r.dtype == repsr::DType::kFloat32 ? std::isnan(out.f32[o]) : out.u8[o] == kU8Sentinel;
    if (!untouched) return "wrote outside the output image at buffer offset " + std::to_string(o);
  }
  double err2 = 0, ref2 = 0, max_err = 0, max_ref = 0;
  int64_t bad = 0;
  char first_bad[160] = "";
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t c = 0; c < r.c; ++c)
      for (int64_t y = 0; y < r.h; ++y)
        for (int64_t x = 0; x < r.w; ++x) {
          const double expected = ref.at(i, c, y, x);
          const int64_t o = offset(r, i, c, y, x);
          if (r.dtype == repsr::DType::kFloat32) {
            const double got = out.f32[o];
            const double err = std::isnan(got) ? INFINITY : std::fabs(got - expected);
            err2 += err * err, ref2 += expected * expected;
            max_err = std::max(max_err, err), max_ref = std::max(max_ref, std::fabs(expected));
          } else {
            const double scaled = std::min(std::max(expected, 0.0), 1.0) * 255.0;
            const double level = std::nearbyint(scaled);
            const double diff = std::fabs(out.u8[o] - level);
            const bool near_boundary = std::fabs(scaled - std::floor(scaled) - 0.5) < 1e-3;
            if (diff > 1 || (diff == 1 && !near_boundary)) {
              if (bad++ == 0)
                std::snprintf(first_bad, sizeof first_bad, "(%lld,%lld,%lld,%lld) got %d want %.4f",
                              (long long)i, (long long)c, (long long)y, (long long)x, out.u8[o],
                              scaled);
            }
          }
        }
  if (r.dtype == repsr::DType::kUInt8)
    return bad == 0 ? "" : std::to_string(bad) + " uint8 values off, first " + first_bad;
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  g_worst_rel = std::max(g_worst_rel, rel);
  if (rel <= 1e-5 && max_err <= 1e-5 * std::max(1.0, max_ref)) return "";
  char msg[160];
  std::snprintf(msg, sizeof msg, "relative L2 error %.3g, max abs error %.3g (max |ref| %.3g)", rel,
                max_err, max_ref);
  return msg;
}

// ---- Cases --------------------------------------------------------------------------------------

struct Case {
  int64_t n = 1, h = 8, w = 8;
  int in_channels = 3, out_channels = 3, width = 16, layers = 4, scale = 2;
  Activation act = Activation::kPrelu;
  bool residual = true, clamp = false;
  Layout in_layout = Layout::kNchw, out_layout = Layout::kNchw;
  repsr::DType in_dtype = repsr::DType::kFloat32, out_dtype = repsr::DType::kFloat32;
  int tile_h = 0, tile_w = 0;
  bool threads = false;  // also run the work items from several threads

  std::string name() const {
    char buf[256];
    std::snprintf(
        buf, sizeof buf,
        "n%lld %lldx%lld in%d out%d ch%d L%d x%d %s res%d clamp%d in:%s/%s out:%s/%s tile%dx%d",
        (long long)n, (long long)h, (long long)w, in_channels, out_channels, width, layers, scale,
        activation_name(act), residual, clamp, layout_name(in_layout),
        in_dtype == repsr::DType::kUInt8 ? "u8" : "f32", layout_name(out_layout),
        out_dtype == repsr::DType::kUInt8 ? "u8" : "f32", tile_h, tile_w);
    return buf;
  }
};

std::vector<Case> make_cases() {
  std::vector<Case> cases;
  const Activation acts[] = {Activation::kNone, Activation::kRelu, Activation::kLeaky,
                             Activation::kPrelu};

  // Channel widths, with 1-, 3- and 4-channel images.
  const int widths[] = {1, 3, 4, 8, 13, 16, 24, 32, 48, 64};
  for (int i = 0; i < 10; ++i) {
    Case c;
    c.width = widths[i];
    c.in_channels = c.out_channels = i % 3 == 0 ? 1 : i % 3 == 1 ? 3 : 4;
    c.h = 13, c.w = 19;
    c.act = acts[i % 4];
    cases.push_back(c);
  }
  // Depth 1..16 with every scale and activation.
  for (int layers = 1; layers <= 16; ++layers) {
    Case c;
    c.layers = layers;
    c.width = layers % 2 ? 8 : 16;
    c.scale = 1 + layers % 4;
    c.act = acts[layers % 4];
    c.h = 9, c.w = 11;
    cases.push_back(c);
  }
  // Tail widths 12, 27, 48 (3 channels x 2^2, 3^2, 4^2) and a wider image.
  for (int scale = 1; scale <= 4; ++scale) {
    Case c;
    c.scale = scale;
    c.h = 17, c.w = 23;
    c.layers = 6;
    cases.push_back(c);
  }
  // Image sizes, including a single pixel and single rows / columns.
  const int64_t sizes[][2] = {{1, 1}, {1, 17}, {17, 1}, {7, 3}, {33, 45}};
  for (const auto& size : sizes) {
    Case c;
    c.h = size[0], c.w = size[1];
    c.layers = 5;
    c.scale = 3;
    cases.push_back(c);
  }
  // Forced tiles: tiny, odd, and not dividing the image.
  const int tiles[][2] = {{1, 1}, {3, 5}, {5, 3}, {1, 7}, {3, 3}};
  for (const auto& tile : tiles) {
    Case c;
    c.h = 11, c.w = 13;
    c.layers = 3;
    c.tile_h = tile[0], c.tile_w = tile[1];
    c.threads = true;
    cases.push_back(c);
  }
  {
    Case c;  // many partial tiles in a deeper net
    c.h = 33, c.w = 45;
    c.layers = 6;
    c.scale = 4;
    c.tile_h = 8, c.tile_w = 16;
    c.threads = true;
    cases.push_back(c);
  }
  {
    Case c;  // the same net with the auto tile
    c.h = 33, c.w = 45;
    c.layers = 6;
    c.scale = 4;
    c.threads = true;
    cases.push_back(c);
  }
  // Batches.
  for (int tile : {0, 4}) {
    Case c;
    c.n = 3;
    c.h = 10, c.w = 14;
    c.tile_h = c.tile_w = tile;
    c.threads = true;
    cases.push_back(c);
  }
  // Layouts and dtypes.
  {
    Case c;
    c.n = 2, c.in_layout = Layout::kGapped, c.out_layout = Layout::kGapped;
    cases.push_back(c);
  }
  {
    Case c;
    c.n = 2, c.in_layout = Layout::kChannelsLast, c.out_layout = Layout::kChannelsLast;
    c.tile_h = 3, c.tile_w = 5;
    cases.push_back(c);
  }
  {
    Case c;  // uint8 HWC in and out: the usual video-frame path
    c.h = 15, c.w = 21, c.scale = 4;
    c.in_layout = c.out_layout = Layout::kChannelsLast;
    c.in_dtype = c.out_dtype = repsr::DType::kUInt8;
    cases.push_back(c);
  }
  {
    Case c;
    c.n = 2, c.h = 9, c.w = 10;
    c.in_dtype = repsr::DType::kUInt8, c.in_layout = Layout::kGapped;
    c.out_layout = Layout::kChannelsLast, c.clamp = true;
    cases.push_back(c);
  }
  {
    Case c;
    c.h = 12, c.w = 7, c.scale = 3;
    c.out_dtype = repsr::DType::kUInt8, c.out_layout = Layout::kGapped;
    c.tile_h = 5, c.tile_w = 3;
    c.residual = false;
    cases.push_back(c);
  }
  // Residual and clamp on / off.
  for (int flags = 0; flags < 4; ++flags) {
    Case c;
    c.residual = flags & 1, c.clamp = flags & 2;
    c.in_channels = 3, c.out_channels = c.residual ? 3 : 2;
    c.h = 10, c.w = 12;
    cases.push_back(c);
  }
  // x4 float32 with unit-stride rows: the epilogue's one-pass path, clamped and not, with tiles.
  for (int clamp = 0; clamp < 2; ++clamp) {
    Case c;
    c.scale = 4, c.clamp = clamp, c.h = 14, c.w = 19, c.act = Activation::kLeaky;
    c.tile_h = clamp ? 6 : 0, c.tile_w = clamp ? 7 : 0;
    cases.push_back(c);
  }
  // Wide and deep nets.
  {
    Case c;
    c.width = 64, c.layers = 6, c.h = 20, c.w = 24, c.scale = 4;
    c.threads = true;
    cases.push_back(c);
  }
  {
    Case c;
    c.width = 48, c.layers = 16, c.h = 10, c.w = 12, c.scale = 2;
    cases.push_back(c);
  }
  {
    Case c;
    c.width = 32, c.layers = 8, c.h = 40, c.w = 50, c.scale = 4, c.act = Activation::kRelu;
    c.tile_h = 16, c.tile_w = 20;
    cases.push_back(c);
  }
  return cases;
}

// Runs the chain's work items from `threads` threads over contiguous ranges, as
// at::parallel_for does (threads == 1: one serial loop).
void run_chain(const repsr::CpuChain& chain, int threads) {
  const int64_t items = chain.num_work_items();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { chain.run(items * t / threads, items * (t + 1) / threads); });
  for (std::thread& th : pool) th.join();
}

bool same_bytes(const Image& a, const Image& b) {
  return a.ref.dtype == repsr::DType::kFloat32
             ? std::memcmp(a.f32.data(), b.f32.data(), a.f32.size() * sizeof(float)) == 0
             : a.u8 == b.u8;
}

// The ISA variants this machine can run, named as CpuChain::isa() reports them.
std::vector<std::string> available_isas() {
  std::mt19937 rng(0);
  TestNet t = make_net(rng, 3, 3, 8, 2, 1, Activation::kNone, true, false);
  Image in = make_image(1, 3, 4, 4, Layout::kNchw, repsr::DType::kFloat32);
  Image out = make_image(1, 3, 4, 4, Layout::kNchw, repsr::DType::kFloat32);
  std::vector<std::string> isas;
  for (const char* cap : {"avx512", "avx2", "portable"}) {
    setenv("REPSR_CPU_MAX_ISA", cap, 1);
    const std::string got = repsr::CpuChain(t.net, in.ref, out.ref).isa();
    check(got == repsr::CpuChain::detected_isa(),
          std::string("detected_isa() agrees with isa() under ") + cap);
    if (std::find(isas.begin(), isas.end(), got) == isas.end()) isas.push_back(got);
  }
  return isas;
}

void run_case(int index, const Case& c, const std::vector<std::string>& isas) {
  std::mt19937 rng(1000 + index);
  TestNet t = make_net(rng, c.in_channels, c.out_channels, c.width, c.layers, c.scale, c.act,
                       c.residual, c.clamp);
  Image in = make_image(c.n, c.in_channels, c.h, c.w, c.in_layout, c.in_dtype);
  const Tensor input = fill_random(in, rng);
  const Tensor ref = reference_forward(t.net, input);
  // Winograd F(4x4, 3x3) runs the layers with cin, cout >= 8 unless REPSR_CPU_WINOGRAD=0.
  bool winograd_applies = false;
  for (int l = 0; l < c.layers; ++l)
    winograd_applies |= t.net.layers[l].cin >= 8 && t.net.layers[l].cout >= 8;
  for (const std::string& isa : isas)
  for (const char* winograd : {"1", "0"}) {
    setenv("REPSR_CPU_MAX_ISA", isa.c_str(), 1);
    setenv("REPSR_CPU_WINOGRAD", winograd, 1);
    Image out =
        make_image(c.n, c.out_channels, c.h * c.scale, c.w * c.scale, c.out_layout, c.out_dtype);
    const repsr::CpuChain chain(t.net, in.ref, out.ref, c.tile_h, c.tile_w);
    const std::string label = c.name() + " [" + isa + ", winograd " + winograd + ", tile " +
                              std::to_string(chain.tile_h()) + "x" +
                              std::to_string(chain.tile_w()) + "]";
    check(chain.isa() == isa, label + ": runs " + chain.isa());
    check(c.tile_h <= 0 || chain.tile_h() == std::min<int64_t>(c.tile_h, c.h),
          label + ": tile_h override");
    check(c.tile_w <= 0 || chain.tile_w() == std::min<int64_t>(c.tile_w, c.w),
          label + ": tile_w override");
    run_chain(chain, 1);
    const std::string problem = compare(out, ref);
    check(problem.empty(), label + ": " + problem);
    // Another tiling (odd tiles, starting off the Winograd block grid) gives the same bits.
    {
      Image retiled =
          make_image(c.n, c.out_channels, c.h * c.scale, c.w * c.scale, c.out_layout, c.out_dtype);
      const int other_h = static_cast<int>(chain.tile_h() > 3 ? chain.tile_h() / 2 + 1 : 5);
      const int other_w = static_cast<int>(chain.tile_w() > 3 ? chain.tile_w() / 3 + 1 : 7);
      const repsr::CpuChain chain2(t.net, in.ref, retiled.ref, other_h, other_w);
      run_chain(chain2, 1);
      check(same_bytes(out, retiled), label + ": tiles " + std::to_string(other_h) + "x" +
                                          std::to_string(other_w) + " differ in bits");
    }
    // The Winograd path is taken where it applies: its float32 bits differ from the direct path's.
    if (winograd_applies && c.out_dtype == repsr::DType::kFloat32 && winograd[0] == '1') {
      setenv("REPSR_CPU_WINOGRAD", "0", 1);
      Image direct =
          make_image(c.n, c.out_channels, c.h * c.scale, c.w * c.scale, c.out_layout, c.out_dtype);
      const repsr::CpuChain chain2(t.net, in.ref, direct.ref, c.tile_h, c.tile_w);
      run_chain(chain2, 1);
      check(!same_bytes(out, direct), label + ": Winograd output equals the direct one bit for bit");
      setenv("REPSR_CPU_WINOGRAD", winograd, 1);
    }
    if (c.threads) {
      for (int threads : {2, 3}) {
        Image threaded = make_image(c.n, c.out_channels, c.h * c.scale, c.w * c.scale, c.out_layout,
                                    c.out_dtype);
        const repsr::CpuChain chain2(t.net, in.ref, threaded.ref, c.tile_h, c.tile_w);
        run_chain(chain2, threads);
        check(same_bytes(out, threaded),
              label + ": " + std::to_string(threads) + " threads differ from serial");
      }
    }
  }
}

// ---- Empty inputs and validate ------------------------------------------------------------------

void test_empty_images() {
  std::mt19937 rng(7);
  TestNet t = make_net(rng, 3, 3, 8, 3, 2, Activation::kPrelu, true, false);
  const int64_t shapes[][3] = {{0, 5, 5}, {1, 0, 5}, {2, 5, 0}};
  for (const auto& s : shapes) {
    Image in = make_image(s[0], 3, s[1], s[2], Layout::kNchw, repsr::DType::kFloat32);
    Image out = make_image(s[0], 3, s[1] * 2, s[2] * 2, Layout::kNchw, repsr::DType::kFloat32);
    const repsr::CpuChain chain(t.net, in.ref, out.ref);
    check(chain.num_work_items() == 0, "empty image has no work items");
    chain.run(0, 1);  // out-of-range items are ignored
  }
}

void test_validate() {
  std::mt19937 rng(8);
  TestNet t = make_net(rng, 3, 3, 8, 3, 2, Activation::kPrelu, true, false);
  Image in = make_image(1, 3, 6, 7, Layout::kNchw, repsr::DType::kFloat32);
  Image out = make_image(1, 3, 12, 14, Layout::kNchw, repsr::DType::kFloat32);
  check(repsr::validate(t.net, in.ref, out.ref) == nullptr, "validate accepts a matching net");

  auto expect = [&](const repsr::Net& net, const repsr::ImageRef& i, const repsr::ImageRef& o,
                    const char* keyword) {
    const char* msg = repsr::validate(net, i, o);
    check(msg != nullptr && std::strstr(msg, keyword) != nullptr,
          std::string("validate names '") + keyword + "', got: " + (msg ? msg : "nullptr"));
    bool threw = false;
    try {
      repsr::CpuChain chain(net, i, o);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    check(threw, std::string("CpuChain rejects a net validate rejects (") + keyword + ")");
  };

  repsr::ImageRef bad = in.ref;
  bad.c = 4;
  expect(t.net, bad, out.ref, "input channels");
  bad = out.ref;
  bad.h = 13;
  expect(t.net, in.ref, bad, "output size");
  bad = out.ref;
  bad.n = 2;
  expect(t.net, in.ref, bad, "batch");
  bad = out.ref;
  bad.c = 2;  // tail cout 12 != 2 * 2 * 2
  expect(t.net, in.ref, bad, "tail cout");

  bad = in.ref;
  bad.dtype = repsr::DType::kFloat16;  // CUDA-only image type
  expect(t.net, bad, out.ref, "float32 or uint8");

  repsr::Net net = t.net;
  net.scale = 0;
  expect(net, in.ref, out.ref, "scale");
  net = t.net;
  net.num_layers = 0;
  expect(net, in.ref, out.ref, "no layers");

  std::vector<repsr::ConvLayer> layers = t.layers;
  layers[1].cin = 5;
  net = t.net;
  net.layers = layers.data();
  expect(net, in.ref, out.ref, "previous layer");

  // Residual with 3 input and 2 output channels: tail 2 * 2 * 2 = 8 channels.
  TestNet t2 = make_net(rng, 3, 2, 8, 2, 2, Activation::kNone, true, false);
  Image out2 = make_image(1, 2, 12, 14, Layout::kNchw, repsr::DType::kFloat32);
  expect(t2.net, in.ref, out2.ref, "residual");
  t2.net.residual = false;
  check(repsr::validate(t2.net, in.ref, out2.ref) == nullptr,
        "validate accepts 3 -> 2 channels without residual");
}

}  // namespace

int main() {
  const std::vector<std::string> isas = available_isas();
  std::printf("ISA variants tested:");
  for (const std::string& isa : isas) std::printf(" %s", isa.c_str());
  std::printf("\n");

  const std::vector<Case> cases = make_cases();
  for (size_t i = 0; i < cases.size(); ++i) run_case(static_cast<int>(i), cases[i], isas);
  test_empty_images();
  test_validate();

  unsetenv("REPSR_CPU_WINOGRAD");
  std::printf("worst float32 relative L2 error: %.3g\n", g_worst_rel);
  return repsr_test::report();
}
