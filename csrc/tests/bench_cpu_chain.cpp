// Times one forward of SRVGG-style x4 nets (head + body + tail, PReLU, residual, float32 NCHW)
// with the work items split over std::threads the way at::parallel_for splits them.
// Usage: bench_cpu_chain [threads=2] [repeats=20] [net index, default all] [tile_h tile_w]
// (REPSR_CPU_MAX_ISA caps the ISA; REPSR_CPU_WINOGRAD=0 times the direct convs instead of Winograd)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "fused_sr.h"

namespace {

struct Config {
  int width, convs;  // channels of the head and body, conv layers in all (head + body + tail)
  int64_t h, w;
};

void bench(const Config& cfg, int threads, int repeats, int forced_tile_h, int forced_tile_w) {
  constexpr int kImageChannels = 3, kScale = 4;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<std::vector<float>> weights, biases, slopes;
  std::vector<repsr::ConvLayer> layers;
  double macs_per_pixel = 0;
  for (int l = 0; l < cfg.convs; ++l) {
    const bool tail = l == cfg.convs - 1;
    const int cin = l == 0 ? kImageChannels : cfg.width;
    const int cout = tail ? kImageChannels * kScale * kScale : cfg.width;
    weights.emplace_back(static_cast<size_t>(cout) * cin * 9);
    for (float& v : weights.back()) v = unit(rng) / (3.0f * std::sqrt(float(cin)));
    biases.emplace_back(cout, 0.01f);
    slopes.emplace_back(tail ? 0 : cout, 0.25f);
    macs_per_pixel += 9.0 * cin * cout;
  }
  for (int l = 0; l < cfg.convs; ++l)
    layers.push_back({l == 0 ? kImageChannels : cfg.width,
                      l == cfg.convs - 1 ? kImageChannels * kScale * kScale : cfg.width,
                      weights[l].data(), biases[l].data(),
                      slopes[l].empty() ? nullptr : slopes[l].data()});
  repsr::Net net;
  net.layers = layers.data();
  net.num_layers = cfg.convs;
  net.scale = kScale;

  std::vector<float> input(kImageChannels * cfg.h * cfg.w), output(input.size() * kScale * kScale);
  for (float& v : input) v = 0.5f * (unit(rng) + 1.0f);
  auto nchw = [](float* data, int64_t c, int64_t h, int64_t w) {
    repsr::ImageRef r;
    r.data = data;
    r.n = 1, r.c = c, r.h = h, r.w = w;
    r.stride_n = c * h * w, r.stride_c = h * w, r.stride_h = w, r.stride_w = 1;
    return r;
  };
  const repsr::ImageRef in = nchw(input.data(), kImageChannels, cfg.h, cfg.w);
  const repsr::ImageRef out = nchw(output.data(), kImageChannels, cfg.h * kScale, cfg.w * kScale);

  std::vector<double> ms;
  int tile_h = 0, tile_w = 0;
  int64_t items = 0;
  const char* isa = "";
  for (int rep = 0; rep < repeats + 2; ++rep) {  // two warm-up runs
    const auto start = std::chrono::steady_clock::now();
    const repsr::CpuChain chain(net, in, out, forced_tile_h, forced_tile_w);  // packs every call
    items = chain.num_work_items();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { chain.run(items * t / threads, items * (t + 1) / threads); });
    for (std::thread& th : pool) th.join();
    const double elapsed =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (rep >= 2) ms.push_back(elapsed);
    tile_h = chain.tile_h(), tile_w = chain.tile_w(), isa = chain.isa();
  }
  std::sort(ms.begin(), ms.end());
  const double gflop = 2.0 * macs_per_pixel * cfg.h * cfg.w / 1e9;
  std::printf(
      "%2dch x %2d convs, 1x3x%lldx%lld -> x4: best %7.2f ms, median %7.2f ms, %6.1f GFLOP/s"
      " (%s, %d threads, tile %dx%d, %lld items)\n",
      cfg.width, cfg.convs, (long long)cfg.h, (long long)cfg.w, ms.front(), ms[ms.size() / 2],
      gflop / (ms.front() / 1e3), isa, threads, tile_h, tile_w, (long long)items);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  const int only = argc > 3 ? std::atoi(argv[3]) : -1;
  const int tile_h = argc > 5 ? std::atoi(argv[4]) : 0, tile_w = argc > 5 ? std::atoi(argv[5]) : 0;
  const Config configs[] = {{16, 6, 180, 320}, {32, 6, 180, 320}, {64, 18, 90, 160}};
  for (int i = 0; i < 3; ++i)
    if (only < 0 || only == i) bench(configs[i], threads, repeats, tile_h, tile_w);
  return 0;
}
