// How a warp's memory request maps onto the hardware, as the emulator counts it (NVIDIA's
// published model for sm_70..sm_90; "CUDA C++ Best Practices Guide", shared memory and
// coalescing sections, and the Nsight Compute "Memory Workload Analysis" definitions):
//
// Shared memory has 32 banks of 4-byte words; word w lives in bank w % 32. A request is split
// into phases of 128 bytes' worth of lanes: all 32 lanes for accesses of up to 4 bytes, half
// warps for 8 bytes, quarter warps for 16 bytes (ldmatrix: one 8x8 matrix, 8 rows of 16 bytes,
// per phase). A phase takes as many wavefronts as the most distinct words any one bank must
// deliver; lanes that touch the same word share it (broadcast). The ideal is one wavefront per
// phase that has an active lane.
//
// Global memory moves 32-byte sectors: a request costs the number of distinct sectors its active
// lanes touch; the useful bytes are the distinct bytes they touch.
//
// Plain functions of the lanes' addresses, so the tests check them on patterns with known answers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace repsr_emu {

struct WarpRequest {
  uint64_t addr[32];   // byte address (shared: offset in the block's shared memory)
  uint32_t active = 0;  // lane mask
  int bytes = 4;        // per lane: 1, 2, 4, 8 or 16 (one size per instruction)
};

struct SharedCost {
  int wavefronts = 0;
  int ideal = 0;  // non-empty phases
};

inline int lanes_per_phase(int bytes) { return bytes <= 4 ? 32 : 128 / bytes; }

inline SharedCost shared_cost(const WarpRequest& r) {
  SharedCost cost;
  const int per_phase = lanes_per_phase(r.bytes);
  for (int first = 0; first < 32; first += per_phase) {
    uint64_t words[32 * 4];
    int count = 0;
    for (int lane = first; lane < first + per_phase; ++lane) {
      if (!(r.active >> lane & 1u)) continue;
      const uint64_t w0 = r.addr[lane] / 4, w1 = (r.addr[lane] + r.bytes - 1) / 4;
      for (uint64_t w = w0; w <= w1; ++w) words[count++] = w;
    }
    if (count == 0) continue;
    std::sort(words, words + count);
    count = static_cast<int>(std::unique(words, words + count) - words);
    int per_bank[32] = {0};
    int worst = 0;
    for (int i = 0; i < count; ++i) worst = std::max(worst, ++per_bank[words[i] % 32]);
    cost.wavefronts += worst;
    cost.ideal += 1;
  }
  return cost;
}

struct GlobalCost {
  int sectors = 0;
  int useful_bytes = 0;  // distinct bytes requested by the active lanes
};

inline GlobalCost global_cost(const WarpRequest& r) {
  GlobalCost cost;
  uint64_t sectors[32 * 2];
  uint64_t starts[32], ends[32];
  int ns = 0, nr = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if (!(r.active >> lane & 1u)) continue;
    const uint64_t a = r.addr[lane], b = a + static_cast<uint64_t>(r.bytes);
    for (uint64_t s = a / 32; s <= (b - 1) / 32; ++s) sectors[ns++] = s;
    starts[nr] = a;
    ends[nr++] = b;
  }
  std::sort(sectors, sectors + ns);
  cost.sectors = static_cast<int>(std::unique(sectors, sectors + ns) - sectors);
  // Union of the lanes' byte ranges (sorted by start).
  int order[32];
  for (int i = 0; i < nr; ++i) order[i] = i;
  std::sort(order, order + nr, [&](int x, int y) { return starts[x] < starts[y]; });
  uint64_t covered_to = 0;
  for (int i = 0; i < nr; ++i) {
    const uint64_t a = std::max(starts[order[i]], covered_to), b = ends[order[i]];
    if (b > a) cost.useful_bytes += static_cast<int>(b - a);
    covered_to = std::max(covered_to, b);
  }
  return cost;
}

}  // namespace repsr_emu
