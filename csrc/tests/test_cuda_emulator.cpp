// Tests of the CUDA emulator itself (csrc/cuda/emulation), on small kernels with known answers:
//   - software half / bfloat16 conversions against an independent rounding formula (and the
//     compiler's _Float16 where it has one), every binary16 / bfloat16 value round-tripped;
//   - ldmatrix.x4 + mma.m16n8k16 (through device_utils.cuh's wrappers) against a float64 GEMM;
//   - the bank-conflict and sector counters on access patterns whose costs are known;
//   - every checker fires on a kernel that has the bug, and stays quiet on its fixed twin:
//     shared races (RAW, WAR, WAW), uninitialized shared reads, shared and global out-of-bounds,
//     divergent __syncthreads (no hang), incomplete warp collectives, races between blocks;
//   - launch configuration errors as the CUDA runtime reports them; blocks run concurrently in a
//     seeded random order.
// Prints "N passed, M failed" last.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cuda/device_utils.cuh"
#include "cuda/emulation/emulator.h"
#include "cuda/emulation/memory_model.h"
#include "tests/check.h"

namespace {

using repsr_test::check;
using namespace repsr::cuda;

// ---- Conversions ----------------------------------------------------------------------------------
double round_to_bits(double v, int bits, int min_exp) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e;
  std::frexp(v, &e);
  const int exp = std::max(e - 1, min_exp);
  const double ulp = std::ldexp(1.0, exp - (bits - 1));
  return std::nearbyint(v / ulp) * ulp;
}

void test_conversions() {
  // Every binary16 and bfloat16 value survives a round trip through float.
  bool half_ok = true, bf16_ok = true;
  for (uint32_t b = 0; b < 65536; ++b) {
    const __half h{static_cast<unsigned short>(b)};
    const float f = __half2float(h);
    if (std::isnan(f)) {
      half_ok = half_ok && (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0 && std::isnan(__half2float(__float2half_rn(f)));
    } else {
      half_ok = half_ok && __float2half_rn(f).__x == b;
    }
    const __nv_bfloat16 g{static_cast<unsigned short>(b)};
    const float fg = __bfloat162float(g);
    bf16_ok = bf16_ok && (std::isnan(fg) ? std::isnan(__bfloat162float(__float2bfloat16_rn(fg)))
                                         : __float2bfloat16_rn(fg).__x == b);
  }
  check(half_ok, "every binary16 value round-trips through float");
  check(bf16_ok, "every bfloat16 value round-trips through float");

  // float -> half / bf16: nearest, ties to even, subnormals, overflow to infinity.
  std::mt19937 rng(5);
  std::vector<float> values = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e9f, -1e9f,
                               5.96046448e-8f, 2.98023224e-8f, 2.98023225e-8f, 6.10351562e-5f,
                               1.00048828125f /* tie: stays 1 */, 1.00146484375f /* tie: up */,
                               3.4e38f, 1e-45f, INFINITY, -INFINITY};
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> ex(-30, 17);
  for (int i = 0; i < 200000; ++i) values.push_back((i & 1 ? -1 : 1) * std::ldexp(mant(rng), ex(rng)));
  // Exact ties between neighbouring halves: odd multiples of half an ulp.
  for (int i = 0; i < 2000; ++i) values.push_back(std::ldexp(float(2 * (1024 + i) + 1), -11 - i % 20));
  bool half_nearest = true, bf16_nearest = true, half_native = true;
  std::string first_bad;
  for (float v : values) {
    double want = round_to_bits(v, 11, -14);
    if (std::fabs(want) > 65504) want = std::copysign(INFINITY, v);
    const float got = __half2float(__float2half_rn(v));
    if (got != want || std::signbit(got) != std::signbit(v)) {
      if (half_nearest) first_bad = std::to_string(v);
      half_nearest = false;
    }
    double want_b = round_to_bits(v, 8, -126);
    if (std::fabs(want_b) > 3.3895313892515355e38) want_b = std::copysign(INFINITY, v);
    bf16_nearest = bf16_nearest && __bfloat162float(__float2bfloat16_rn(v)) == want_b;
#if defined(__FLT16_MAX__)
    half_native = half_native && __half2float(__float2half_rn(v)) == static_cast<float>(static_cast<_Float16>(v));
#endif
  }
  check(half_nearest, "float -> half rounds to nearest even (first mismatch: " + first_bad + ")");
  check(bf16_nearest, "float -> bfloat16 rounds to nearest even");
  check(half_native, "float -> half agrees with the compiler's _Float16 conversion");
  check(std::isnan(__half2float(__float2half_rn(NAN))) && std::isnan(__bfloat162float(__float2bfloat16_rn(NAN))),
        "NaN stays NaN");
  check(__float2int_rn(2.5f) == 2 && __float2int_rn(3.5f) == 4 && __float2int_rn(-0.5f) == 0,
        "__float2int_rn rounds half to even");
}

// ---- Helpers ----------------------------------------------------------------------------------------
struct Buffer {
  void* p;
  Buffer(size_t bytes, const char* label) : p(repsr_emu::device_malloc(bytes, label)) {}
  ~Buffer() { repsr_emu::device_free(p); }
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
};

// Runs `launch`, returns the emulator's reports and the launch record.
template <typename F>
std::vector<std::string> run(F launch, repsr_emu::LaunchRecord* record = nullptr) {
  repsr_emu::take_reports();
  repsr_emu::take_launches();
  launch();
  const std::vector<repsr_emu::LaunchRecord> launches = repsr_emu::take_launches();
  if (record != nullptr && !launches.empty()) *record = launches.back();
  return repsr_emu::take_reports();
}

bool mentions(const std::vector<std::string>& reports, const std::string& what) {
  for (const std::string& r : reports)
    if (r.find(what) != std::string::npos) return true;
  return false;
}

std::string first(const std::vector<std::string>& reports) { return reports.empty() ? "none" : reports[0]; }

// ---- ldmatrix + mma ---------------------------------------------------------------------------------
// One warp: A (16 x 16, row-major f16/bf16 in shared memory) through ldmatrix.x4, B (16 x 8) given
// as per-lane fragments, C (16 x 8 f32); D = A B + C written row-major.
template <typename T>
__global__ void mma_kernel(const T* a, const uint32_t* b_frag, const float* c, float* d) {
  REPSR_DYNAMIC_SMEM(smem);
  T* sa = reinterpret_cast<T*>(smem);
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) st_shared(sa + i, __ldg(a + i));
  __syncthreads();
  // PTX: lanes 8m..8m+7 give the rows of matrix m; matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15),
  // in the order a0a1, a2a3, a4a5, a6a7 of the A fragment: rows 0-7/k 0-7, rows 8-15/k 0-7, ...
  const int m = lane / 8, row = lane % 8 + (m % 2) * 8, col = (m / 2) * 8;
  uint32_t ra[4];
  ldmatrix_x4(ra, smem_address(sa + row * 16 + col));
  float acc[4];
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) acc[i] = __ldg(c + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1));
  mma_16816<T>(acc, ra, __ldg(b_frag + 2 * lane), __ldg(b_frag + 2 * lane + 1));
  for (int i = 0; i < 4; ++i) st_global(d + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1), acc[i]);
}

template <typename T>
void test_mma(bool bf16) {
  std::mt19937 rng(bf16 ? 11 : 10);
  std::uniform_real_distribution<float> u(-1, 1);
  Buffer a(256 * sizeof(T), "A"), b(64 * sizeof(uint32_t), "B fragments"), c(128 * 4, "C"), d(128 * 4, "D");
  std::vector<double> A(256), B(128), C(128);
  auto to_t = [&](float v) {
    if (bf16) return __bfloat162float(__float2bfloat16_rn(v));
    return __half2float(__float2half_rn(v));
  };
  auto bits = [&](float v) -> uint32_t {
    return bf16 ? __float2bfloat16_rn(v).__x : __float2half_rn(v).__x;
  };
  for (int i = 0; i < 256; ++i) {
    A[i] = to_t(u(rng));
    if (bf16)
      a.as<__nv_bfloat16>()[i] = __float2bfloat16_rn(static_cast<float>(A[i]));
    else
      a.as<__half>()[i] = __float2half_rn(static_cast<float>(A[i]));
  }
  for (int i = 0; i < 128; ++i) B[i] = to_t(u(rng));  // B[k * 8 + n]
  for (int i = 0; i < 128; ++i) C[i] = c.as<float>()[i] = u(rng);
  // B fragments (PTX ISA mma.m16n8k16): lane (g, t) holds b0, b1 = B[2t][g], B[2t+1][g] in its
  // first register and b2, b3 = B[2t+8][g], B[2t+9][g] in its second, lower index in the low half.
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    auto pair = [&](int k) {
      return bits(static_cast<float>(B[k * 8 + g])) | (bits(static_cast<float>(B[(k + 1) * 8 + g])) << 16);
    };
    b.as<uint32_t>()[2 * lane] = pair(2 * t);
    b.as<uint32_t>()[2 * lane + 1] = pair(2 * t + 8);
  }
  repsr_emu::LaunchRecord rec;
  const auto reports = run([&] {
    REPSR_LAUNCH(mma_kernel<T>, "mma test", 1, 32, 512, nullptr)(a.as<T>(), b.as<uint32_t>(), c.as<float>(), d.as<float>());
  }, &rec);
  double worst = 0;
  for (int i = 0; i < 16; ++i)
    for (int n = 0; n < 8; ++n) {
      double want = C[i * 8 + n];
      for (int k = 0; k < 16; ++k) want += A[i * 16 + k] * B[k * 8 + n];
      worst = std::max(worst, std::fabs(d.as<float>()[i * 8 + n] - want));
    }
  const std::string t = bf16 ? "bf16" : "f16";
  check(reports.empty(), t + " mma kernel runs clean: " + first(reports));
  check(worst < 1e-5, t + " ldmatrix + mma.m16n8k16 = float64 GEMM (max error " + std::to_string(worst) + ")");
  check(rec.mma == 1 && rec.ldmatrix.requests == 1, t + ": one mma and one ldmatrix counted");
  check(rec.ldmatrix.wavefronts == 8 && rec.ldmatrix.ideal_wavefronts == 4,
        t + ": 16 x 16 tile with 32-byte rows: 2-way conflicts, 8 wavefronts for 4 (got " +
            std::to_string(rec.ldmatrix.wavefronts) + ")");
}

// ---- Counters on known patterns ---------------------------------------------------------------------
// Each lane touches element `lane * stride + offset` (elements of T), optionally only even lanes.
template <typename T>
__global__ void pattern_kernel(T* global, const T* input, int stride, int offset, int even_only) {
  REPSR_DYNAMIC_SMEM(smem);
  T* s = reinterpret_cast<T*>(smem);
  const int lane = threadIdx.x;
  const bool on = !even_only || lane % 2 == 0;
  const bool writer = on && (stride != 0 || lane == 0);  // one writer per element: no race
  const int i = lane * stride + offset;
  st_shared_if(writer, s + i, T{});
  __syncthreads();
  const T v = on ? ld_shared(s + i) : T{};
  st_global_if(writer, global + i, v);
  (void)ld_global_if(on, input + i, T{});
}

template <typename T>
repsr_emu::LaunchRecord pattern(int stride, int offset, bool even_only) {
  Buffer g(sizeof(T) * (32 * static_cast<size_t>(stride) + offset + 1), "pattern");
  Buffer in(sizeof(T) * (32 * static_cast<size_t>(stride) + offset + 1), "pattern input");
  repsr_emu::LaunchRecord rec;
  const auto reports = run([&] {
    REPSR_LAUNCH(pattern_kernel<T>, "pattern", 1, 32, sizeof(T) * (32 * stride + offset + 1), nullptr)(
        g.as<T>(), in.as<T>(), stride, offset, even_only ? 1 : 0);
  }, &rec);
  check(reports.empty(), "pattern kernel runs clean: " + first(reports));
  return rec;
}

void expect_shared(const repsr_emu::SharedCounter& c, uint64_t wavefronts, uint64_t ideal, const std::string& what) {
  check(c.requests == 1 && c.wavefronts == wavefronts && c.ideal_wavefronts == ideal,
        what + ": " + std::to_string(c.wavefronts) + " wavefronts (ideal " + std::to_string(c.ideal_wavefronts) +
            "), want " + std::to_string(wavefronts) + " (" + std::to_string(ideal) + ")");
}
void expect_global(const repsr_emu::GlobalCounter& c, uint64_t sectors, uint64_t useful, const std::string& what) {
  check(c.requests == 1 && c.sectors == sectors && c.useful_bytes == useful,
        what + ": " + std::to_string(c.sectors) + " sectors, " + std::to_string(c.useful_bytes) +
            " useful bytes; want " + std::to_string(sectors) + ", " + std::to_string(useful));
}

void test_counters() {
  // 4-byte words: stride s has gcd(s, 32)-way conflicts.
  const int strides[][2] = {{1, 1}, {2, 2}, {4, 4}, {32, 32}, {33, 1}, {17, 1}};
  for (const auto& s : strides) {
    const repsr_emu::LaunchRecord r = pattern<float>(s[0], 0, false);
    expect_shared(r.shared_store, s[1], 1, "float stride " + std::to_string(s[0]) + " store");
    expect_shared(r.shared_load, s[1], 1, "float stride " + std::to_string(s[0]) + " load");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<float>(1, 0, false);
    expect_global(r.global_store, 4, 128, "32 consecutive floats, aligned");
    expect_global(r.global_load, 4, 128, "32 consecutive floats, aligned (load)");
    const repsr_emu::LaunchRecord m = pattern<float>(1, 1, false);
    expect_global(m.global_store, 5, 128, "32 consecutive floats, 4 bytes off");
    const repsr_emu::LaunchRecord two = pattern<float>(2, 0, false);
    expect_global(two.global_store, 8, 128, "stride-2 floats: half of each sector wasted");
    check(std::fabs(two.global_store.efficiency() - 0.5) < 1e-12, "stride 2: 50% sector efficiency");
    const repsr_emu::LaunchRecord wide = pattern<float>(8, 0, false);
    expect_global(wide.global_store, 32, 128, "stride-8 floats: one sector per lane");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<float>(0, 5, false);  // every lane the same word
    expect_shared(r.shared_load, 1, 1, "broadcast");
    expect_global(r.global_load, 1, 4, "broadcast load: one sector, 4 useful bytes");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<float>(1, 0, true);  // predicated: even lanes only
    expect_shared(r.shared_store, 1, 1, "even lanes, float stride 1");
    expect_global(r.global_store, 4, 64, "even lanes: 4 sectors, 64 useful bytes");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<uint4>(1, 0, false);  // 16 bytes a lane
    expect_shared(r.shared_store, 4, 4, "uint4 consecutive: one wavefront per quarter warp");
    expect_global(r.global_store, 16, 512, "uint4 consecutive: 16 sectors");
    const repsr_emu::LaunchRecord s2 = pattern<uint4>(2, 0, false);
    expect_shared(s2.shared_store, 8, 4, "uint4 stride 32 bytes: 2-way per quarter warp");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<float2>(1, 0, false);  // 8 bytes a lane: half warps
    expect_shared(r.shared_store, 2, 2, "float2 consecutive: one wavefront per half warp");
    const repsr_emu::LaunchRecord c = pattern<float2>(16, 0, false);
    expect_shared(c.shared_store, 32, 2, "float2 stride 128 bytes: 16-way per half warp");
  }
  {
    const repsr_emu::LaunchRecord r = pattern<uint8_t>(1, 0, false);
    expect_shared(r.shared_store, 1, 1, "bytes: 4 lanes share a word");
    expect_global(r.global_store, 1, 32, "32 bytes: one sector");
  }
  // The model on ldmatrix-like requests directly: 8 rows of 16 bytes per phase.
  {
    repsr_emu::WarpRequest req;
    req.bytes = 16;
    req.active = 0xffffffffu;
    for (int l = 0; l < 32; ++l) req.addr[l] = (l % 8) * 128 + (l / 8) * 16;  // rows 128 B apart
    check(repsr_emu::shared_cost(req).wavefronts == 32, "ldmatrix rows 128 bytes apart: 8-way");
    for (int l = 0; l < 32; ++l) req.addr[l] = (l % 8) * 144 + (l / 8) * 16 * 9 * 8;  // odd x 16 B
    check(repsr_emu::shared_cost(req).wavefronts == 4, "ldmatrix rows an odd multiple of 16 bytes apart");
  }
}

// ---- Checkers ---------------------------------------------------------------------------------------
// mode 0: barrier between the write and the neighbour's read; 1: none (read-after-write race);
// 2: the neighbour's value read first, then the own cell written (write-after-read race);
// 3: two threads write the same cell (write-after-write); 4: read a cell nobody wrote.
__global__ void race_kernel(float* out, int mode) {
  REPSR_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x, next = (t + 1) % 64;
  float v = 0;
  switch (mode) {
    case 0:
      st_shared(s + t, float(t));
      __syncthreads();
      v = ld_shared(s + next);
      break;
    case 1:
      st_shared(s + t, float(t));
      v = ld_shared(s + next);
      break;
    case 2:
      st_shared(s + t, float(t));
      __syncthreads();
      v = ld_shared(s + next);
      st_shared(s + t, v);
      break;
    case 3:
      st_shared(s + t / 2, float(t));
      break;
    case 4:
      v = ld_shared(s + 64 + t);
      break;
  }
  st_global(out + t, v);
}

std::vector<std::string> race(int mode) {
  Buffer out(64 * 4, "out");
  return run([&] { REPSR_LAUNCH(race_kernel, "race", 1, 64, 512, nullptr)(out.as<float>(), mode); });
}

// mode 0: clean; 1: half the block skips the barrier and exits; 2: two halves at different
// barriers; 3: a warp's upper half skips an ldmatrix.
__global__ void sync_kernel(int mode) {
  REPSR_DYNAMIC_SMEM(smem);
  const int t = threadIdx.x;
  st_shared(reinterpret_cast<uint4*>(smem) + t, make_uint4(0, 0, 0, 0));
  if (mode == 0) __syncthreads();
  if (mode == 1 && t < 32) __syncthreads();
  if (mode == 2) {
    if (t < 32)
      __syncthreads();
    else
      __syncthreads();
  }
  if (mode == 3) {
    __syncthreads();
    uint32_t r[4];
    if (t % 32 < 16) ldmatrix_x4(r, smem_address(smem + 16 * (t % 32)));
  }
}

std::vector<std::string> sync_case(int mode) {
  return run([&] { REPSR_LAUNCH(sync_kernel, "sync", 1, 64, 1024, nullptr)(mode); });
}

__global__ void bounds_kernel(float* g, int mode) {
  REPSR_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  if (mode == 0) st_shared(s + t, 1.0f);           // inside 128 bytes
  if (mode == 1) st_shared(s + t + 1, 1.0f);       // the last thread writes one float past the end
  if (mode == 2) st_global(g + t + 1, 1.0f);       // one past the allocation
  if (mode == 3) st_shared(reinterpret_cast<float*>(smem + 2) + t, 1.0f);  // misaligned
}

std::vector<std::string> bounds(int mode) {
  Buffer g(32 * 4, "g");
  return run([&] { REPSR_LAUNCH(bounds_kernel, "bounds", 1, 32, 128, nullptr)(g.as<float>(), mode); });
}

// mode 0: each block writes its own element; 1: all write element 0; 2: block b reads (__ldg)
// element b + 1, which block b + 1 writes.
__global__ void blocks_kernel(float* g, int mode) {
  const int b = blockIdx.x;
  if (threadIdx.x != 0) return;
  if (mode == 0) st_global(g + b, 1.0f);
  if (mode == 1) st_global(g, float(b));
  if (mode == 2) {
    st_global(g + b, 1.0f);
    if (b + 1 < int(gridDim.x)) (void)__ldg(g + b + 1);
  }
}

std::vector<std::string> blocks_case(int mode) {
  Buffer g(8 * 4, "g");
  // The planted races (modes 1, 2) run their blocks one at a time: the emulator finds them from
  // the blocks' access sets at the end of the launch, and under ThreadSanitizer two workers doing
  // them at once would be a real race of this test program.
  const int workers = repsr_emu::config().workers;
  if (mode != 0) repsr_emu::config().workers = 1;
  auto reports = run([&] { REPSR_LAUNCH(blocks_kernel, "blocks", 8, 32, 0, nullptr)(g.as<float>(), mode); });
  repsr_emu::config().workers = workers;
  return reports;
}

void test_checkers() {
  check(race(0).empty(), "a barrier between write and read: no report, got " + first(race(0)));
  check(mentions(race(1), "read-after-write race"), "read-after-write race reported: " + first(race(1)));
  check(mentions(race(2), "write-after-read race"), "write-after-read race reported: " + first(race(2)));
  check(mentions(race(3), "write-after-write race"), "write-after-write race reported: " + first(race(3)));
  check(mentions(race(4), "never wrote"), "uninitialized shared read reported: " + first(race(4)));

  check(sync_case(0).empty(), "a uniform barrier: no report, got " + first(sync_case(0)));
  check(mentions(sync_case(1), "divergent barrier"), "half the block skipping a barrier: reported, no hang: " + first(sync_case(1)));
  check(mentions(sync_case(2), "threads wait at"), "two different barriers: reported: " + first(sync_case(2)));
  check(mentions(sync_case(3), "incomplete warp collective"), "ldmatrix by half a warp: reported, no hang: " + first(sync_case(3)));

  check(bounds(0).empty(), "in-bounds stores: no report, got " + first(bounds(0)));
  check(mentions(bounds(1), "shared out of bounds"), "shared store past the end reported: " + first(bounds(1)));
  check(mentions(bounds(2), "global out of bounds") && mentions(bounds(2), "'g'"),
        "global store past the allocation reported with its name: " + first(bounds(2)));
  check(mentions(bounds(3), "misaligned"), "misaligned shared store reported: " + first(bounds(3)));

  check(blocks_case(0).empty(), "blocks writing their own elements: no report, got " + first(blocks_case(0)));
  check(mentions(blocks_case(1), "write-write race between blocks"), "blocks writing one element: reported: " + first(blocks_case(1)));
  check(mentions(blocks_case(2), "read-only path"), "a block reading what another writes: reported: " + first(blocks_case(2)));
}

// ---- Launch configuration and block scheduling ----------------------------------------------------
__global__ void empty_kernel(int) {}

std::mutex g_order_mutex;
std::vector<unsigned> g_order;
std::atomic<int> g_running{0}, g_max_running{0};

// Thread 0 of each block records the block and, until two blocks have been seen running at once
// (or 5 s passed), waits for another block to start: with concurrent workers that happens at once.
__global__ void order_kernel(int) {
  if (threadIdx.x == 0) {
    const int now = ++g_running;
    int seen = g_max_running.load();
    while (now > seen && !g_max_running.compare_exchange_weak(seen, now)) {
    }
    {
      std::lock_guard<std::mutex> lock(g_order_mutex);
      g_order.push_back(blockIdx.x);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (g_max_running.load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    --g_running;
  }
}

void test_launches() {
  repsr_emu::Config& cfg = repsr_emu::config();
  (void)cudaGetLastError();
  REPSR_LAUNCH(empty_kernel, "empty", 1, 2048, 0, nullptr)(0);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads a block: invalid configuration");
  REPSR_LAUNCH(empty_kernel, "empty", 1, 32, 64 * 1024, nullptr)(0);
  check(cudaGetLastError() == cudaErrorInvalidValue, "64 KB dynamic shared memory without opt-in: invalid value");
  check(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess,
        "opt in to 100 KB");
  REPSR_LAUNCH(empty_kernel, "empty", 1, 32, 64 * 1024, nullptr)(0);
  check(cudaGetLastError() == cudaSuccess, "64 KB after opting in");
  check(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             cfg.smem_per_block_optin + 1) == cudaErrorInvalidValue,
        "opting in beyond the device's maximum fails");
  (void)cudaGetLastError();
  cudaFuncAttributes attr;
  check(cudaFuncGetAttributes(&attr, empty_kernel) == cudaSuccess && attr.ptxVersion == cfg.kernel_ptx_version &&
            attr.maxDynamicSharedSizeBytes == 100 * 1024,
        "cudaFuncGetAttributes reports the image's architecture and the opt-in");

  std::vector<std::vector<unsigned>> orders;
  const uint64_t saved_seed = cfg.seed;
  for (uint64_t seed : {1, 2}) {
    cfg.seed = seed;
    g_order.clear();
    g_max_running = 0;
    REPSR_LAUNCH(order_kernel, "order", 16, 64, 0, nullptr)(0);
    orders.push_back(g_order);
  }
  cfg.seed = saved_seed;
  std::vector<unsigned> sorted = orders[0];
  std::sort(sorted.begin(), sorted.end());
  bool all = sorted.size() == 16;
  for (unsigned i = 0; all && i < 16; ++i) all = sorted[i] == i;
  check(all, "every block runs once");
  check(orders[0] != orders[1], "two seeds, two block orders");
  std::vector<unsigned> in_order(16);
  for (unsigned i = 0; i < 16; ++i) in_order[i] = i;
  check(orders[0] != in_order || orders[1] != in_order, "blocks do not run in index order");
  check(cfg.workers < 2 || g_max_running.load() >= 2,
        "at least two blocks run at once (saw " + std::to_string(g_max_running.load()) + ")");
}

}  // namespace

int main() {
  std::printf("emulator: %d workers, seed %llu\n", repsr_emu::config().workers,
              (unsigned long long)repsr_emu::config().seed);
  test_conversions();
  test_mma<__half>(false);
  test_mma<__nv_bfloat16>(true);
  test_counters();
  test_checkers();
  test_launches();
  return repsr_test::report();
}
