// The CUDA chain (csrc/cuda, compiled by the host compiler against csrc/cuda/emulation) executed
// on the CPU: run_fused_sr_cuda with its planner, workspace, weight packing and segment kernels,
// against the float64 reference of reference_chain.h, with the emulator's checks (bounds, shared-
// memory races and uninitialized reads, divergent barriers, races between blocks) required clean.
//
// Tolerances (those of python_tests/test_cuda.py):
//   float32     relative L2 error <= 1e-5 and max abs error <= 1e-5 * max(1, max |ref|) against
//               float64 (float32 accumulation of up to 9 x 130 products per layer, 40 layers).
//   fp16/bf16   relative L2 error against float64 <= max(2 x that of the rounded reference chain
//               (weights, first input, every activation and the output rounded to the type, as
//               PyTorch's float16 chain does), a floor of 1e-3 / 8e-3); and against the rounded
//               chain itself <= the same bound (the kernel computes that chain, up to float32
//               accumulation order).
//   uint8       (float16 or float32 compute) at most one level from round(clamp(ref) * 255)
//               anywhere, and no more mismatching values than 2 x those of the rounded chain
//               (+1% of the values).
// Usage: test_cuda_emulated [--quick] [--counters] [--case SUBSTRING] [--list] [--bench-counters] [--sites] [--model-json FILE] [--hardware-json FILE]
//   --quick: the subset run under ThreadSanitizer. REPSR_EMU_SEED picks the block orders.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/emulation/emulator.h"
#include "cuda/tiling.cuh"
#include "fused_sr.h"
#include "tests/check.h"
#include "tests/reference_chain.h"

namespace {

using namespace repsr_test;
using repsr::DType;
using namespace repsr::cuda;  // the planner and tile arithmetic (tiling.cuh), for the model export

bool g_print_counters = false;
bool g_print_sites = false;  // --sites: the counters per access site too

// ---- Rounding, independent of the emulator's conversions ----------------------------------------
// Nearest value with `bits` significand bits (ties to even), exponent floor `min_exp` (subnormal
// spacing 2^(min_exp - bits + 1)): binary16 is (11, -14), bfloat16 (8, -126).
double round_to_bits(double v, int bits, int min_exp) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e;
  std::frexp(v, &e);  // v = m 2^e, 0.5 <= |m| < 1
  const int exp = std::max(e - 1, min_exp);
  const double ulp = std::ldexp(1.0, exp - (bits - 1));
  return std::nearbyint(v / ulp) * ulp;  // default rounding mode: ties to even
}
double round_f16(double v) { return round_to_bits(v, 11, -14); }
double round_bf16(double v) { return round_to_bits(v, 8, -126); }

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "f32";
    case DType::kFloat16: return "f16";
    case DType::kBFloat16: return "bf16";
    case DType::kUInt8: return "u8";
  }
  return "?";
}
int dtype_bytes(DType d) { return d == DType::kFloat32 ? 4 : d == DType::kUInt8 ? 1 : 2; }

// ---- Device images ------------------------------------------------------------------------------
enum class Layout { kNchw, kChannelsLast, kGapped };
const char* layout_name(Layout l) {
  return l == Layout::kNchw ? "nchw" : l == Layout::kChannelsLast ? "nhwc" : "gapped";
}

// An image in emulated device memory; buffer slots that are not image elements hold a sentinel
// (NaN, or 77 for uint8) that must survive the launch.
struct DeviceImage {
  repsr::ImageRef ref;
  size_t slots = 0;
  std::vector<char> is_element;
  void* allocation = nullptr;  // ref.data is `shift` elements into it
  DeviceImage() = default;
  DeviceImage(const DeviceImage&) = delete;
  DeviceImage& operator=(const DeviceImage&) = delete;
  ~DeviceImage() { repsr_emu::device_free(allocation); }

  double get(size_t slot) const {
    switch (ref.dtype) {
      case DType::kFloat32: return static_cast<const float*>(ref.data)[slot];
      case DType::kFloat16: return __half2float(static_cast<const __half*>(ref.data)[slot]);
      case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(ref.data)[slot]);
      case DType::kUInt8: return static_cast<const uint8_t*>(ref.data)[slot];
    }
    return 0;
  }
  // v must be exactly representable (the test writes values it has rounded itself).
  void set(size_t slot, double v) {
    switch (ref.dtype) {
      case DType::kFloat32: static_cast<float*>(ref.data)[slot] = static_cast<float>(v); break;
      case DType::kFloat16: static_cast<__half*>(ref.data)[slot] = __float2half_rn(static_cast<float>(v)); break;
      case DType::kBFloat16:
        static_cast<__nv_bfloat16*>(ref.data)[slot] = __float2bfloat16_rn(static_cast<float>(v));
        break;
      case DType::kUInt8: static_cast<uint8_t*>(ref.data)[slot] = static_cast<uint8_t>(v); break;
    }
  }
  bool is_sentinel(size_t slot) const {
    return ref.dtype == DType::kUInt8 ? get(slot) == 77 : std::isnan(get(slot));
  }
  int64_t offset(int64_t i, int64_t c, int64_t y, int64_t x) const {
    return i * ref.stride_n + c * ref.stride_c + y * ref.stride_h + x * ref.stride_w;
  }
};

// `shift` > 0: the image starts that many elements into its (256-byte aligned) allocation, so its
// rows are not 16-byte aligned (a view such as out[..., 1:]).
void make_image(DeviceImage* img, int64_t n, int64_t c, int64_t h, int64_t w, Layout layout,
                DType dtype, const char* label, int64_t shift = 0) {
  repsr::ImageRef& r = img->ref;
  r.dtype = dtype;
  r.n = n, r.c = c, r.h = h, r.w = w;
  switch (layout) {
    case Layout::kNchw: r.stride_w = 1, r.stride_h = w, r.stride_c = h * w, r.stride_n = c * h * w; break;
    case Layout::kChannelsLast:
      r.stride_c = 1, r.stride_w = c, r.stride_h = w * c, r.stride_n = h * w * c;
      break;
    case Layout::kGapped:
      r.stride_w = 2, r.stride_h = 2 * w + 3, r.stride_c = h * r.stride_h + 5, r.stride_n = c * r.stride_c + 7;
      break;
  }
  img->slots = static_cast<size_t>(std::max<int64_t>(1, (n - 1) * r.stride_n + (c - 1) * r.stride_c +
                                                           (h - 1) * r.stride_h + (w - 1) * r.stride_w + 1));
  if (n == 0 || c == 0 || h == 0 || w == 0) img->slots = 1;
  img->allocation = repsr_emu::device_malloc((img->slots + shift) * dtype_bytes(dtype), label);
  r.data = static_cast<char*>(img->allocation) + shift * dtype_bytes(dtype);
  img->is_element.assign(img->slots, 0);
  for (size_t s = 0; s < img->slots; ++s) img->set(s, dtype == DType::kUInt8 ? 77 : NAN);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) img->is_element[img->offset(i, ch, y, x)] = 1;
}

// Random values in (0, 1] (uint8: 0..255), returned as the chain reads them (uint8: k / 255).
Tensor fill_random(DeviceImage& img, std::mt19937& rng) {
  const repsr::ImageRef& r = img.ref;
  Tensor t = make_tensor(r.n, r.c, r.h, r.w);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t c = 0; c < r.c; ++c)
      for (int64_t y = 0; y < r.h; ++y)
        for (int64_t x = 0; x < r.w; ++x) {
          double v;
          switch (r.dtype) {
            case DType::kUInt8: v = byte(rng); break;
            case DType::kFloat16: v = round_f16(1.0 - unit(rng)); break;
            case DType::kBFloat16: v = round_bf16(1.0 - unit(rng)); break;
            default: v = static_cast<float>(1.0 - unit(rng)); break;
          }
          img.set(img.offset(i, c, y, x), v);
          t.at(i, c, y, x) = r.dtype == DType::kUInt8 ? static_cast<float>(v / 255.0) : v;
        }
  return t;
}

// ---- A device copy of a net -----------------------------------------------------------------------
struct DeviceNet {
  std::vector<void*> buffers;
  std::vector<repsr::ConvLayer> layers;
  repsr::Net net;
  DeviceNet(const DeviceNet&) = delete;
  explicit DeviceNet(const TestNet& t) : net(t.net) {
    auto upload = [this](const std::vector<float>& v, const char* label) -> const float* {
      if (v.empty()) return nullptr;
      void* p = repsr_emu::device_malloc(v.size() * sizeof(float), label);
      std::memcpy(p, v.data(), v.size() * sizeof(float));
      buffers.push_back(p);
      return static_cast<const float*>(p);
    };
    for (size_t l = 0; l < t.layers.size(); ++l) {
      repsr::ConvLayer layer = t.layers[l];
      layer.weight = upload(t.weight[l], "weight");
      layer.bias = upload(t.bias[l], "bias");
      layer.neg_slope = upload(t.neg_slope[l], "neg_slope");
      layers.push_back(layer);
    }
    net.layers = layers.data();
  }
  ~DeviceNet() {
    for (void* p : buffers) repsr_emu::device_free(p);
  }
};

// ---- Running ------------------------------------------------------------------------------------
struct RunResult {
  std::string error;  // run_fused_sr_cuda's message, if any
  std::vector<std::string> reports;
  std::vector<repsr_emu::LaunchRecord> launches;
};

RunResult run_chain(const repsr::Net& net, const repsr::ImageRef& in, const repsr::ImageRef& out,
                    DType compute, int64_t workspace_slack = 0) {
  RunResult r;
  repsr_emu::take_reports();
  repsr_emu::take_launches();
  const size_t bytes = repsr::cuda_workspace_bytes(net, in, out, compute);
  const size_t given = static_cast<size_t>(std::max<int64_t>(0, static_cast<int64_t>(bytes) + workspace_slack));
  void* ws = repsr_emu::device_malloc(given, "workspace");
  repsr::CudaLaunch launch;
  launch.compute = compute;
  launch.workspace = ws;
  launch.workspace_bytes = given;
  const char* problem = repsr::run_fused_sr_cuda(net, in, out, launch);
  if (problem != nullptr) r.error = problem;
  repsr_emu::device_free(ws);
  r.reports = repsr_emu::take_reports();
  r.launches = repsr_emu::take_launches();
  if (g_print_counters)
    for (const auto& l : r.launches) {
      std::printf("    %s\n", repsr_emu::describe(l).c_str());
      if (g_print_sites) {
        std::string sites = repsr_emu::describe_sites(l);
        for (size_t at = 0; at < sites.size();) {
          const size_t end = sites.find('\n', at);
          std::printf("        %s\n", sites.substr(at, end - at).c_str());
          at = end + 1;
        }
      }
    }
  return r;
}

// ---- Comparison ---------------------------------------------------------------------------------
struct Errors {
  double rel = 0, max_abs = 0, max_ref = 0;
};

Errors errors(const Tensor& got, const Tensor& ref) {
  Errors e;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.v.size(); ++i) {
    const double d = std::isnan(got.v[i]) ? INFINITY : std::fabs(got.v[i] - ref.v[i]);
    err2 += d * d;
    ref2 += ref.v[i] * ref.v[i];
    e.max_abs = std::max(e.max_abs, d);
    e.max_ref = std::max(e.max_ref, std::fabs(ref.v[i]));
  }
  e.rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  return e;
}

// The output as doubles (uint8: levels 0..255); "" or what was written outside the image.
std::string read_output(const DeviceImage& out, Tensor* t) {
  const repsr::ImageRef& r = out.ref;
  *t = make_tensor(r.n, r.c, r.h, r.w);
  for (size_t s = 0; s < out.slots; ++s)
    if (!out.is_element[s] && !out.is_sentinel(s))
      return "wrote outside the output image at buffer slot " + std::to_string(s);
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t c = 0; c < r.c; ++c)
      for (int64_t y = 0; y < r.h; ++y)
        for (int64_t x = 0; x < r.w; ++x) t->at(i, c, y, x) = out.get(out.offset(i, c, y, x));
  return "";
}

double level(double v) { return std::nearbyint(std::min(std::max(v, 0.0), 1.0) * 255.0); }

// ---- Cases --------------------------------------------------------------------------------------
struct Case {
  std::string label;
  std::vector<int> widths = {3, 16, 16, 16, 12};
  int scale = 2;
  Activation act = Activation::kPrelu;
  bool residual = true, clamp = false;
  int64_t n = 1, h = 9, w = 11;
  Layout in_layout = Layout::kNchw, out_layout = Layout::kNchw;
  DType in_dtype = DType::kFloat32, compute = DType::kFloat32;
  int smem_budget = 0;  // > 0: the emulated device's opt-in shared memory per block
  int sm_count = 0;     // > 0: the emulated device's SMs (few: the planner picks wide tiles)
  const char* plan = "cost";  // REPSR_CUDA_PLAN
  int min_segments = 1, max_segments = 1000;  // the plan must have this many segments
  int pack_launches = 1;
  int out_shift = 0;         // the output starts this many elements into its allocation
  bool vector_tail = false;  // the tail's output stores must be 16-byte vectors (> 128 bytes a request)
  bool quick = false;  // also in the ThreadSanitizer subset

  DType out_dtype() const { return in_dtype; }
  std::string name() const {
    std::string chain;
    for (size_t i = 0; i < widths.size(); ++i) chain += (i ? "-" : "") + std::to_string(widths[i]);
    const std::string budget = (smem_budget ? " smem " + std::to_string(smem_budget) : "") +
                               (std::strcmp(plan, "cost") ? std::string(" plan ") + plan : "") +
                               (out_shift ? " out shifted " + std::to_string(out_shift) : "") +
                               (sm_count ? " " + std::to_string(sm_count) + " SMs" : "");
    char buf[320];
    std::snprintf(buf, sizeof buf, "%s: n%lld %lldx%lld widths %s x%d %s res%d clamp%d %s %s -> %s, compute %s%s",
                  label.c_str(), (long long)n, (long long)h, (long long)w, chain.c_str(), scale,
                  activation_name(act), residual, clamp, dtype_name(in_dtype), layout_name(in_layout),
                  layout_name(out_layout), dtype_name(compute), budget.c_str());
    return buf;
  }
};

std::vector<int> chain(int in, int width, int layers, int tail) {
  std::vector<int> w = {in};
  for (int l = 0; l + 1 < layers; ++l) w.push_back(width);
  w.push_back(tail);
  return w;
}

std::vector<Case> make_cases() {
  std::vector<Case> cases;
  const DType computes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  const Activation acts[] = {Activation::kNone, Activation::kRelu, Activation::kLeaky, Activation::kPrelu};
  auto add = [&](Case c) { cases.push_back(c); };
  auto each_dtype = [&](Case c) {
    for (DType d : computes) {
      c.in_dtype = c.compute = d;
      add(c);
    }
  };
  // Every activation and scale.
  for (int scale = 1; scale <= 4; ++scale)
    for (Activation a : acts) {
      Case c;
      c.label = "activation/scale";
      c.widths = chain(3, 16, 4, 3 * scale * scale);
      c.scale = scale;
      c.act = a;
      c.n = 2, c.h = 13, c.w = 11;
      c.quick = scale == 4 && a == Activation::kPrelu;
      each_dtype(c);
    }
  // Channel counts 1..130: several 64-channel warp units, remainders of 8 and 16.
  for (int width : {1, 4, 8, 13, 16, 24, 32, 48, 64, 72, 96, 128, 130}) {
    Case c;
    c.label = "channels";
    c.widths = width > 64 ? std::vector<int>{3, width, 27} : std::vector<int>{3, width, width, 12};
    c.scale = width > 64 ? 3 : 2;
    c.h = 11, c.w = 13;
    c.quick = width == 130;
    each_dtype(c);
  }
  // Image sizes: one pixel, one row / column, odd sizes, several tiles.
  const int64_t sizes[][2] = {{1, 1}, {1, 17}, {17, 1}, {7, 3}, {37, 71}};
  for (const auto& s : sizes) {
    Case c;
    c.label = "size";
    c.widths = chain(3, 16, 5, 48);
    c.scale = 4;
    c.h = s[0], c.w = s[1];
    c.quick = s[0] == 7;
    each_dtype(c);
  }
  // Depth: 16 layers in a single segment (the largest a launch carries), and one layer per
  // segment (a boundary map between every two layers).
  {
    Case c;
    c.label = "16 layers, one segment";
    c.widths = chain(3, 8, 16, 27);
    c.scale = 3;
    c.h = 10, c.w = 9;
    c.plan = "fewest";
    c.max_segments = 1;
    each_dtype(c);
    c.label = "16 layers, one per segment";
    c.plan = "layer";
    c.min_segments = c.max_segments = 16;
    c.quick = true;
    each_dtype(c);
  }
  // More than 32 layers: two weight-packing launches.
  {
    Case c;
    c.label = "40 layers";
    c.widths = chain(3, 4, 40, 12);
    c.h = 6, c.w = 7;
    c.act = Activation::kLeaky;
    c.pack_launches = 2;
    c.min_segments = 3;  // at most 16 layers a segment
    each_dtype(c);
  }
  // Segment splits forced by a small shared-memory budget: boundary maps through the workspace.
  {
    Case c;
    c.label = "split by shared memory";
    c.widths = chain(3, 64, 6, 48);
    c.scale = 4;
    c.n = 2, c.h = 14, c.w = 19;
    c.smem_budget = 40 * 1024;
    c.min_segments = 2;
    each_dtype(c);
    c.widths = chain(3, 32, 4, 12);  // the same, small enough for the ThreadSanitizer subset
    c.scale = 2;
    c.h = 8, c.w = 10;
    c.smem_budget = 6 * 1024;
    c.quick = true;
    each_dtype(c);
  }
  // Layouts, batches, residual / clamp.
  for (Layout l : {Layout::kChannelsLast, Layout::kGapped}) {
    Case c;
    c.label = "layout";
    c.in_layout = c.out_layout = l;
    c.n = 3, c.h = 8, c.w = 10;
    each_dtype(c);
  }
  for (int flags = 0; flags < 4; ++flags) {
    Case c;
    c.label = "residual/clamp";
    c.residual = flags & 1, c.clamp = flags & 2;
    c.widths = {3, 16, 16, c.residual ? 12 : 8};  // 3 -> 2 channels without the residual
    each_dtype(c);
  }
  // uint8 HWC in and out (clamped), x4 to 3 channels, computed in `compute`.
  const auto uint8_hwc = [](const char* label, int layers, int64_t n, int64_t h, int64_t w, DType compute) {
    Case c;
    c.label = label;
    c.widths = chain(3, 16, layers, 48);
    c.scale = 4;
    c.n = n, c.h = h, c.w = w;
    c.in_layout = c.out_layout = Layout::kChannelsLast;
    c.in_dtype = DType::kUInt8;
    c.compute = compute;
    c.clamp = true;
    return c;
  };
  // float16 (the op's choice) and float32 compute.
  for (DType compute : {DType::kFloat16, DType::kFloat32}) {
    Case c = uint8_hwc("uint8 hwc", 4, 2, 12, 15, compute);
    c.quick = compute == DType::kFloat16;
    add(c);
  }
  // The tail's 16-byte vector stores (device_utils.cuh, write_tail_rows): output rows whose bytes are
  // a multiple of 16 (tiles cut at the image's right edge end in a partial chunk), and the same
  // outputs shifted by one element (rows misaligned: element stores). Tensor-core kernels vector-
  // store NCHW only (the staging's NHWC gather would conflict); the float32 kernel both layouts.
  for (int shift : {0, 1}) {
    for (Layout l : {Layout::kNchw, Layout::kChannelsLast}) {
      Case c;
      c.label = "tail stores";
      c.widths = chain(3, 16, 3, 48);
      c.scale = 4;
      c.n = 2, c.h = 9, c.w = 22;  // output rows of 88 pixels
      c.in_layout = c.out_layout = l;
      c.out_shift = shift;
      c.sm_count = 4;
      for (DType d : computes) {
        c.in_dtype = c.compute = d;
        c.vector_tail = shift == 0 && (l == Layout::kNchw || d == DType::kFloat32);
        c.quick = shift == 0 && d != DType::kBFloat16 && l == Layout::kNchw;
        add(c);
      }
    }
    for (DType compute : {DType::kFloat16, DType::kFloat32}) {  // uint8 HWC: 3 x 48-pixel rows of 144 bytes
      Case c = uint8_hwc("tail stores", 3, 1, 7, 12, compute);
      c.out_shift = shift;
      c.sm_count = 4;
      c.vector_tail = shift == 0 && compute == DType::kFloat32;
      add(c);
    }
  }
  {  // x3, a 1-channel NCHW output of 48-pixel rows (96 bytes in float16)
    Case c;
    c.label = "tail stores";
    c.widths = {1, 8, 8, 9};
    c.scale = 3;
    c.n = 1, c.h = 5, c.w = 16;
    c.sm_count = 4;
    each_dtype(c);
    for (size_t i = cases.size() - 3; i < cases.size(); ++i) cases[i].vector_tail = true;
  }
  // Random nets: mixed widths, scales, channel counts of the image.
  {
    std::mt19937 rng(4242);
    for (int trial = 0; trial < 8; ++trial) {
      Case c;
      c.label = "random net " + std::to_string(trial);
      const int layers = std::uniform_int_distribution<int>(1, 7)(rng);
      c.scale = std::uniform_int_distribution<int>(1, 4)(rng);
      const int in = std::vector<int>{1, 3, 4}[trial % 3];
      const int choices[] = {1, 4, 8, 13, 16, 24, 32, 48, 64};
      c.widths = {in};
      for (int l = 0; l + 1 < layers; ++l) c.widths.push_back(choices[rng() % 9]);
      c.widths.push_back(in * c.scale * c.scale);
      c.act = acts[rng() % 4];
      c.n = 1 + trial % 2;
      c.h = std::uniform_int_distribution<int>(1, 20)(rng);
      c.w = std::uniform_int_distribution<int>(1, 20)(rng);
      c.in_dtype = c.compute = computes[trial % 3];
      c.quick = trial < 3;
      add(c);
    }
  }
  return cases;
}

void run_case(const Case& c, uint64_t seed) {
  const std::string name = c.name() + " [seed " + std::to_string(seed) + "]";
  repsr_emu::Config& cfg = repsr_emu::config();
  const repsr_emu::Config saved = cfg;
  if (c.smem_budget > 0) cfg.smem_per_block_optin = cfg.smem_per_sm = c.smem_budget;
  if (c.sm_count > 0) cfg.sm_count = c.sm_count;
  setenv("REPSR_CUDA_PLAN", c.plan, 1);

  std::mt19937 rng(static_cast<uint32_t>(seed));
  const TestNet host = make_net_widths(rng, c.widths, c.scale, c.act, c.residual, c.clamp);
  const DeviceNet dev(host);
  DeviceImage in, out;
  make_image(&in, c.n, c.widths[0], c.h, c.w, c.in_layout, c.in_dtype, "input");
  const int out_channels = c.widths.back() / (c.scale * c.scale);
  make_image(&out, c.n, out_channels, c.h * c.scale, c.w * c.scale, c.out_layout, c.out_dtype(), "output",
             c.out_shift);
  const Tensor input = fill_random(in, rng);

  const RunResult r = run_chain(dev.net, in.ref, out.ref, c.compute);
  cfg = saved;
  unsetenv("REPSR_CUDA_PLAN");
  check(r.error.empty(), name + ": run_fused_sr_cuda: " + r.error);
  check(r.reports.empty(), name + ": the emulator found " + std::to_string(r.reports.size()) +
                               " problems (first: " + (r.reports.empty() ? "" : r.reports[0]) + ")");
  int packs = 0, segments = 0;
  for (const auto& l : r.launches) (l.name == "pack_weights" ? packs : segments) += 1;
  check(packs == c.pack_launches, name + ": " + std::to_string(packs) + " weight-packing launches");
  check(segments >= c.min_segments && segments <= c.max_segments,
        name + ": " + std::to_string(segments) + " segment launches");
  // The tensor-core kernel's own shared accesses (planes, copies, ldmatrix; the tail staging is
  // device_utils.cuh's) take one wavefront per phase at every plane size (tiling.cuh,
  // tc_order_pixel and tc_row_pitch).
  for (const auto& l : r.launches)
    for (const auto& site : l.sites) {
      const bool shared = site.kind == "ldmatrix" || site.kind.rfind("shared", 0) == 0;
      if (shared && site.site.find("segment_tc.cuh") != std::string::npos)
        check(site.cost == site.ideal, name + ": " + site.kind + " at " + site.site + " took " + std::to_string(site.cost) +
                                           " wavefronts for " + std::to_string(site.ideal) + " phases");
    }

  // One element per lane, the tail's output needs at least bytes / (32 x element size) store
  // requests; 16-byte vectors need fewer.
  if (c.vector_tail && !r.launches.empty()) {
    const repsr_emu::GlobalCounter& st = r.launches.back().global_store;
    const uint64_t scalar_minimum = st.useful_bytes / (32 * static_cast<uint64_t>(dtype_bytes(c.out_dtype())));
    check(st.requests > 0 && st.requests < scalar_minimum,
          name + ": the tail stored " + std::to_string(st.useful_bytes) + " bytes in " + std::to_string(st.requests) +
              " requests (one element a lane needs " + std::to_string(scalar_minimum) + "): no 16-byte vectors");
  }

  Tensor got;
  const std::string outside = read_output(out, &got);
  check(outside.empty(), name + ": " + outside);
  const Tensor ref = reference_forward(dev.net, input);
  char msg[256];
  if (c.in_dtype == DType::kUInt8) {
    const Tensor rounded = reference_forward(dev.net, input, c.compute == DType::kFloat16 ? round_f16 : nullptr);
    int64_t off_by_one = 0, rounded_off = 0, worse = 0;
    for (size_t i = 0; i < ref.v.size(); ++i) {
      const double want = level(ref.v[i]);
      const double d = std::fabs(got.v[i] - want);
      worse += d > 1;
      off_by_one += d == 1;
      rounded_off += level(rounded.v[i]) != want;
    }
    const int64_t allowed = 2 * rounded_off + static_cast<int64_t>(ref.v.size()) / 100;
    std::snprintf(msg, sizeof msg, ": %lld values more than one level off, %lld one level off (allowed %lld)",
                  (long long)worse, (long long)off_by_one, (long long)allowed);
    check(worse == 0 && off_by_one <= allowed, name + msg);
    return;
  }
  const Errors e = errors(got, ref);
  if (c.compute == DType::kFloat32) {
    std::snprintf(msg, sizeof msg, ": relative L2 error %.3g, max abs %.3g (max |ref| %.3g)", e.rel,
                  e.max_abs, e.max_ref);
    check(e.rel <= 1e-5 && e.max_abs <= 1e-5 * std::max(1.0, e.max_ref), name + msg);
    return;
  }
  const bool half = c.compute == DType::kFloat16;
  const Tensor rounded = reference_forward(dev.net, input, half ? round_f16 : round_bf16);
  const double bar = errors(rounded, ref).rel;
  const double bound = std::max(2 * bar, half ? 1e-3 : 8e-3);
  const double vs_rounded = errors(got, rounded).rel;
  std::snprintf(msg, sizeof msg,
                ": relative L2 error %.3g against float64 (bound %.3g; the rounded chain's %.3g), "
                "%.3g against the rounded chain",
                e.rel, bound, bar, vs_rounded);
  check(e.rel <= bound && vs_rounded <= bound, name + msg);
}

// ---- Host-side behaviour of run_fused_sr_cuda -----------------------------------------------------
void test_host_checks() {
  std::mt19937 rng(99);
  const TestNet host = make_net_widths(rng, {3, 16, 16, 12}, 2, Activation::kPrelu, true, false);
  const DeviceNet dev(host);
  DeviceImage in, out;
  make_image(&in, 1, 3, 6, 5, Layout::kNchw, DType::kFloat16, "input");
  make_image(&out, 1, 3, 12, 10, Layout::kNchw, DType::kFloat16, "output");
  fill_random(in, rng);
  repsr_emu::Config& cfg = repsr_emu::config();
  const repsr_emu::Config saved = cfg;

  // Tensor-core kernels whose image is PTX for sm_75 (JIT-compiled on this sm_90): refused with
  // the rebuild message before any tensor-core launch, instead of reaching __trap(). The verdict
  // is kept per device, so this looks at a device that has not run a tensor-core kernel yet.
  cfg.kernel_ptx_version = 75;
  cfg.device = 3;
  RunResult r = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
  cfg = saved;
  check(r.error.find("TORCH_CUDA_ARCH_LIST") != std::string::npos,
        "a pre-sm_80 tensor-core image is refused with the rebuild message, got: " + r.error);
  bool segment_ran = false;
  for (const auto& l : r.launches) segment_ran |= l.name != "pack_weights";
  check(!segment_ran, "no tensor-core segment is launched from a pre-sm_80 image");

  // fp16 on a GPU without sm_80 tensor cores.
  cfg.cc_major = 7, cfg.cc_minor = 5;
  r = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
  cfg = saved;
  check(r.error.find("sm_80") != std::string::npos, "fp16 on sm_75 is refused, got: " + r.error);
  check(r.launches.empty(), "nothing is launched for fp16 on sm_75");

  // cudaFuncSetAttribute once per kernel and device: a second identical call sets nothing again.
  {
    RunResult first = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
    const uint64_t before = repsr_emu::func_set_attribute_calls();
    RunResult again = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
    check(first.error.empty() && again.error.empty() && again.reports.empty(), "two identical runs succeed");
    check(repsr_emu::func_set_attribute_calls() == before,
          "the second run sets no kernel attribute again (" +
              std::to_string(repsr_emu::func_set_attribute_calls() - before) + " calls)");
  }

  // A workspace one byte short.
  r = run_chain(dev.net, in.ref, out.ref, DType::kFloat16, -1);
  check(r.error.find("workspace") != std::string::npos, "a short workspace is refused, got: " + r.error);
  check(r.launches.empty(), "nothing is launched with a short workspace");

  // An unknown plan policy.
  setenv("REPSR_CUDA_PLAN", "fastest", 1);
  r = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
  unsetenv("REPSR_CUDA_PLAN");
  check(r.error.find("REPSR_CUDA_PLAN") != std::string::npos && r.launches.empty(),
        "an unknown REPSR_CUDA_PLAN is refused by name, got: " + r.error);

  // An empty batch: nothing to launch, no error.
  DeviceImage in0, out0;
  make_image(&in0, 0, 3, 6, 5, Layout::kNchw, DType::kFloat16, "input");
  make_image(&out0, 0, 3, 12, 10, Layout::kNchw, DType::kFloat16, "output");
  r = run_chain(dev.net, in0.ref, out0.ref, DType::kFloat16);
  check(r.error.empty() && r.launches.empty(), "N = 0 launches nothing: " + r.error);

  // The planner's kernels fit the emulated device's limits: every launch configured itself (a
  // dynamic shared-memory size above the kernel's attribute fails like cudaLaunchKernel does).
  r = run_chain(dev.net, in.ref, out.ref, DType::kFloat16);
  bool all_ok = !r.launches.empty();
  for (const auto& l : r.launches) all_ok = all_ok && l.error == cudaSuccess;
  check(all_ok && r.error.empty() && r.reports.empty(), "a plain fp16 run launches cleanly: " + r.error);
}

// ---- Counters on the benchmark cases ---------------------------------------------------------------
// x4 from N x 3 x 720 x 1280 for the benchmark presets, every compute type and the uint8 NHWC
// image path: the plan the launcher picks (the emulated device is an H100 SXM / H200: 132 SMs,
// 227 KiB of shared memory per block), each segment run on a sample of its blocks (the first =
// top-left corner, two in the middle, the last = bottom-right corner). The output is not checked
// (most blocks do not run); the correctness cases above cover these kernels.
struct BenchPreset {
  const char* name;
  int channels, layers;
};
const BenchPreset kBenchPresets[] = {{"M4C16", 16, 6}, {"M4C32", 32, 6}, {"M10C32", 32, 12}, {"M16C64", 64, 18}};
struct BenchIo {
  const char* name;
  DType dtype, compute;
  Layout layout;
};
const BenchIo kBenchIos[] = {{"f32 nchw", DType::kFloat32, DType::kFloat32, Layout::kNchw},
                             {"f16 nchw", DType::kFloat16, DType::kFloat16, Layout::kNchw},
                             {"bf16 nchw", DType::kBFloat16, DType::kBFloat16, Layout::kNchw},
                             {"u8 nhwc", DType::kUInt8, DType::kFloat16, Layout::kChannelsLast}};
constexpr int kBenchScale = 4;
constexpr int64_t kBenchH = 720, kBenchW = 1280;

bool sampled_block(const std::string& kernel, uint64_t b, uint64_t blocks) {
  return kernel == "pack_weights" || b == 0 || b == blocks / 2 || b == blocks / 2 + 1 || b + 1 == blocks;
}
uint64_t sampled_blocks(uint64_t blocks) {
  uint64_t count = 0;
  for (uint64_t b = 0; b < blocks; ++b) count += sampled_block("", b, blocks);
  return count;
}

struct Sample {
  ChainShape shape;
  ChainPlan plan;
  std::vector<repsr_emu::LaunchRecord> segments;  // one per plan segment
};

// `sampled`: only the sampled blocks run (benchmark sizes); else every block (the small cases of
// hardware_json, whose totals a profiler can measure).
Sample sample_case(const BenchPreset& preset, const BenchIo& io, int64_t batch, int64_t height = kBenchH,
                   int64_t width = kBenchW, bool sampled = true) {
  repsr_emu::Config& cfg = repsr_emu::config();
  const repsr_emu::Config saved = cfg;
  if (sampled) cfg.block_filter = sampled_block;
  std::mt19937 rng(7);
  const TestNet host = make_net_widths(rng, chain(3, preset.channels, preset.layers, 3 * kBenchScale * kBenchScale),
                                       kBenchScale, Activation::kPrelu, true, false);
  const DeviceNet dev(host);
  DeviceImage in, out;
  make_image(&in, batch, 3, height, width, io.layout, io.dtype, "input");
  make_image(&out, batch, 3, height * kBenchScale, width * kBenchScale, io.layout, io.dtype, "output");
  fill_random(in, rng);
  const RunResult r = run_chain(dev.net, in.ref, out.ref, io.compute);
  cfg = saved;
  const std::string what = std::string(preset.name) + " " + io.name + " batch " + std::to_string(batch);
  check(r.error.empty(), what + ": " + r.error);
  check(r.reports.empty(), what + ": the emulator found problems (first: " + (r.reports.empty() ? "" : r.reports[0]) + ")");

  Sample sample;
  ChainShape& s = sample.shape;
  s.path = io.compute == DType::kFloat32 ? Path::kFp32 : Path::kTensorCore;
  s.widths = chain(3, preset.channels, preset.layers, 3 * kBenchScale * kBenchScale);
  s.n = batch, s.h = height, s.w = width, s.scale = kBenchScale;
  s.in_bytes = s.out_bytes = dtype_bytes(io.dtype);
  s.residual = true;
  DeviceModel d;  // what the launcher's query_device reports on the emulated device
  d.sm_count = cfg.sm_count;
  d.smem_per_block = cfg.smem_per_block_optin;
  d.smem_per_sm = cfg.smem_per_sm;
  sample.plan = plan_chain(d, s);
  for (const auto& l : r.launches)
    if (l.name != "pack_weights") sample.segments.push_back(l);
  check(sample.segments.size() == sample.plan.segments.size(), what + ": one launch per planned segment");
  return sample;
}

void bench_counters() {
  for (const BenchPreset& preset : kBenchPresets)
    for (const BenchIo& io : kBenchIos) {
      std::printf("%s x%d %lldx%lld %s (compute %s)\n", preset.name, kBenchScale, (long long)kBenchH,
                  (long long)kBenchW, io.name, dtype_name(io.compute));
      const bool print = g_print_counters;
      g_print_counters = true;
      sample_case(preset, io, 1);
      g_print_counters = print;
    }
}

// One segment of a sample as a JSON object: its layers, tile, blocks, shared memory, the useful MACs
// and those the kernel executes (padding and halo recomputation included), and the launch's
// counters over the blocks that ran (`sampled_blocks` of them).
std::string segment_json(const ChainShape& s, const SegmentPlan& seg, const repsr_emu::LaunchRecord& l) {
  const int k = seg.last - seg.first;
  const int64_t blocks = grid_blocks(seg.grid);
  double useful = 0, executed = 0;
  for (int j = 0; j < k; ++j) {
    const int cin = s.widths[seg.first + j], cout = s.widths[seg.first + j + 1];
    const Plane pout = segment_plane(k, j + 1, seg.th, seg.tw, 0, 0);
    const bool tail_layer = seg.last == s.num_layers() && j == k - 1;
    useful += 9.0 * cin * cout * double(s.n) * s.h * s.w;
    executed += s.path == Path::kFp32
                    ? double(f32_items(cout, pout.rows, pout.cols)) * kF32Rows * kF32Couts * 9.0 * cin * blocks
                    : double(tc_units(cout, pout.rows, pout.cols, tail_layer)) * kTcWarpPixels * 8.0 *
                          tc_warp_ntiles(cout) * 9.0 * tc_channels(cin) * blocks;
  }
  std::string widths;
  for (int j = seg.first; j <= seg.last; ++j) widths += (j > seg.first ? "," : "") + std::to_string(s.widths[j]);
  auto shared = [](const repsr_emu::SharedCounter& c) {
    char b[160];
    std::snprintf(b, sizeof b, "{\"requests\": %llu, \"wavefronts\": %llu, \"ideal\": %llu, \"bytes\": %llu}",
                  (unsigned long long)c.requests, (unsigned long long)c.wavefronts,
                  (unsigned long long)c.ideal_wavefronts, (unsigned long long)c.bytes);
    return std::string(b);
  };
  auto global = [](const repsr_emu::GlobalCounter& c) {
    char b[160];
    std::snprintf(b, sizeof b, "{\"requests\": %llu, \"sectors\": %llu, \"useful_bytes\": %llu}",
                  (unsigned long long)c.requests, (unsigned long long)c.sectors, (unsigned long long)c.useful_bytes);
    return std::string(b);
  };
  std::vector<char> b(2048);
  std::snprintf(b.data(), b.size(),
                "{\"first\": %d, \"last\": %d, \"widths\": [%s], \"tail\": %s, \"th\": %d, \"tw\": %d, "
                "\"blocks\": %lld, \"smem\": %lld, \"kernel\": \"%s\", \"useful_macs\": %.0f, \"executed_macs\": %.0f, "
                "\"sampled_blocks\": %llu, \"ldmatrix\": %s, \"shared_load\": %s, \"shared_store\": %s, "
                "\"global_load\": %s, \"global_store\": %s, \"mma\": %llu, \"barriers\": %llu}",
                seg.first, seg.last, widths.c_str(), seg.last == s.num_layers() ? "true" : "false", seg.th, seg.tw,
                (long long)blocks, (long long)seg.smem.total, l.name.c_str(), useful, executed,
                (unsigned long long)l.blocks_run, shared(l.ldmatrix).c_str(), shared(l.shared_load).c_str(),
                shared(l.shared_store).c_str(), global(l.global_load).c_str(), global(l.global_store).c_str(),
                (unsigned long long)l.mma, (unsigned long long)l.barriers);
  return std::string(b.data());
}

struct JsonCase {
  const BenchPreset* preset;
  const BenchIo* io;
  int64_t batch, height, width;
};

// Cases as JSON: each with its net (presets: widths 3, channels x (layers - 1), 48; PReLU; the
// nearest-upsampled input added), input and the plan's segments (segment_json). `sampled`: the
// sampled blocks of each launch, else all of them.
void write_cases_json(const char* path, const std::vector<JsonCase>& cases, bool sampled) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    check(false, std::string("cannot write ") + path);
    return;
  }
  std::fprintf(f, "{\"emulated_device\": {\"sm_count\": %d, \"smem_per_block\": %d}, \"sampled\": %s,\n \"cases\": [\n",
               repsr_emu::config().sm_count, repsr_emu::config().smem_per_block_optin, sampled ? "true" : "false");
  bool first_case = true;
  for (const JsonCase& c : cases) {
    std::printf("%s %s batch %lld %lldx%lld\n", c.preset->name, c.io->name, (long long)c.batch, (long long)c.height,
                (long long)c.width);
    std::fflush(stdout);
    const Sample sample = sample_case(*c.preset, *c.io, c.batch, c.height, c.width, sampled);
    const ChainShape& s = sample.shape;
    std::fprintf(f, "%s  {\"preset\": \"%s\", \"channels\": %d, \"layers\": %d, \"io\": \"%s\", \"compute\": \"%s\", "
                 "\"batch\": %lld, \"height\": %lld, \"width\": %lld, \"scale\": %d, \"element_bytes\": %d, "
                 "\"segments\": [\n",
                 first_case ? "" : ",\n", c.preset->name, c.preset->channels, c.preset->layers, c.io->name,
                 dtype_name(c.io->compute), (long long)c.batch, (long long)s.h, (long long)s.w, s.scale, s.in_bytes);
    first_case = false;
    for (size_t i = 0; i < sample.plan.segments.size() && i < sample.segments.size(); ++i) {
      const repsr_emu::LaunchRecord& l = sample.segments[i];
      std::fprintf(f, "%s    %s", i ? ",\n" : "", segment_json(s, sample.plan.segments[i], l).c_str());
      const uint64_t blocks = static_cast<uint64_t>(grid_blocks(sample.plan.segments[i].grid));
      check(l.blocks_run == (sampled ? sampled_blocks(blocks) : blocks), "blocks run as filtered");
    }
    std::fprintf(f, "\n  ]}");
  }
  std::fprintf(f, "\n]}\n");
  std::fclose(f);
}

// Every benchmark case, batch 1 and 8, sampled: benchmarks/gpu_model.py scales the counters of
// the sampled blocks to the whole launch.
void model_json(const char* path) {
  std::vector<JsonCase> cases;
  for (const BenchPreset& preset : kBenchPresets)
    for (const BenchIo& io : kBenchIos)
      for (int64_t batch : {int64_t{1}, int64_t{8}}) cases.push_back({&preset, &io, batch, kBenchH, kBenchW});
  write_cases_json(path, cases, true);
}

// Small cases run whole, so that a profiler's totals on a GPU can be set beside the emulator's
// (benchmarks/hardware_counters.py; python_tests/gpu_check.sh runs it under ncu): M4C16 in
// every compute type and layout, M16C64 in float16 and float32, x4 from LR sizes whose plans
// have edge tiles in both directions.
void hardware_json(const char* path) {
  std::vector<JsonCase> cases;
  for (const BenchIo& io : kBenchIos) cases.push_back({&kBenchPresets[0], &io, 1, 90, 160});
  cases.push_back({&kBenchPresets[0], &kBenchIos[1], 2, 37, 71});
  cases.push_back({&kBenchPresets[3], &kBenchIos[0], 1, 30, 52});
  cases.push_back({&kBenchPresets[3], &kBenchIos[1], 1, 30, 52});
  write_cases_json(path, cases, false);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, list = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--counters") g_print_counters = true;
    else if (a == "--sites") g_print_counters = g_print_sites = true;
    else if (a == "--list") list = true;
    else if (a == "--bench-counters") {
      bench_counters();
      return report();
    } else if (a == "--model-json" && i + 1 < argc) {
      model_json(argv[++i]);
      return report();
    } else if (a == "--hardware-json" && i + 1 < argc) {
      hardware_json(argv[++i]);
      return report();
    }
    else if (a == "--case" && i + 1 < argc) filter = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--counters] [--case SUBSTRING] [--list] [--bench-counters] [--sites] [--model-json FILE] [--hardware-json FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  const uint64_t seed = repsr_emu::config().seed;
  std::printf("emulator: %d workers, seed %llu (REPSR_EMU_SEED)\n", repsr_emu::config().workers,
              (unsigned long long)seed);
  const std::vector<Case> cases = make_cases();
  int ran = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    if (quick && !c.quick) continue;
    if (!filter.empty() && c.name().find(filter) == std::string::npos) continue;
    if (list) {
      std::printf("%s\n", c.name().c_str());
      continue;
    }
    std::printf("%s", c.name().c_str());
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    run_case(c, 1000 + i + seed * 7919);
    std::printf("  (%.2f s)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ++ran;
  }
  if (list) return 0;
  if (filter.empty() || std::string("host checks").find(filter) != std::string::npos) test_host_checks();
  std::printf("%d cases\n", ran);
  return report();
}
