// The CUDA emulator as test programs drive it: the emulated device's description, device memory,
// the problems found, and per-launch counters. (The kernels see only cuda_emu.h.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace repsr_emu {

struct Config {
  // Blocks run on this many OS threads at once, each with its own shared memory, in a random order
  // drawn from `seed` (also the order of the threads within a block): races between blocks through
  // global memory become visible (ThreadSanitizer, and the launch-end overlap checks).
  int workers = 2;
  uint64_t seed = 1;
  // The emulated device, as cudaDeviceGetAttribute reports it (defaults: H100 SXM).
  int sm_count = 132;
  int smem_per_block = 48 * 1024;         // without opt-in
  int smem_per_block_optin = 227 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smem_per_sm = 228 * 1024;
  int cc_major = 9, cc_minor = 0;
  // What cudaFuncGetAttributes says the kernels' images were compiled for (10 * major + minor):
  // below cc_major/minor means PTX JIT-compiled for this device.
  int kernel_ptx_version = 90;
  int device = 0;  // what cudaGetDevice reports (devices 0..7 all look like the above)
  bool counters = true;    // group accesses into warp requests and count them (costs time)
  double timeout_s = 600;  // a launch running longer is reported and the process aborted
  // Only the blocks for which this returns true run (sampling for the counters); empty: all.
  // Arguments: the kernel's name (as launched), the block index, the launch's block count.
  std::function<bool(const std::string& kernel, uint64_t block, uint64_t blocks)> block_filter;
};

// The process-wide configuration; set it before launching. REPSR_EMU_SEED and REPSR_EMU_WORKERS
// override seed and workers when set.
Config& config();

struct SharedCounter {
  uint64_t requests = 0;          // warp-level instructions
  uint64_t wavefronts = 0;        // memory_model.h
  uint64_t ideal_wavefronts = 0;  // one per non-empty phase
  uint64_t bytes = 0;             // bytes the active lanes moved
};
struct GlobalCounter {
  uint64_t requests = 0;
  uint64_t sectors = 0;       // 32-byte sectors moved
  uint64_t useful_bytes = 0;  // distinct bytes the active lanes asked for
  double efficiency() const { return sectors ? double(useful_bytes) / (32.0 * sectors) : 1.0; }
};

// One access site (source line and kind) of a launch: warp requests and their cost. Shared memory
// and ldmatrix: cost = wavefronts, ideal = one per phase; global memory: cost = 32-byte sectors,
// ideal = the sectors the useful bytes would fill.
struct SiteRecord {
  std::string site;  // file:line
  std::string kind;  // "shared load", "shared store", "ldmatrix", "global load", "global store"
  uint64_t requests = 0, cost = 0, ideal = 0;
};

struct LaunchRecord {
  std::string name;
  dim3 grid, block;
  size_t dynamic_smem = 0;
  uint64_t blocks_run = 0;
  cudaError_t error = cudaSuccess;  // what cudaGetLastError reported for the launch itself
  SharedCounter shared_load, shared_store, ldmatrix;
  GlobalCounter global_load, global_store;
  uint64_t mma = 0;       // warp-level mma.m16n8k16
  uint64_t barriers = 0;  // block-wide barriers completed, summed over blocks
  uint64_t problems = 0;  // reports made during the launch
  std::vector<SiteRecord> sites;  // per access site, in source order
};

// Launches since the last call (oldest first), and the problems found since the last call: each
// is one line naming what, where (file:line, kernel, block, thread) and the address.
std::vector<LaunchRecord> take_launches();
std::vector<std::string> take_reports();
// A one-line summary of a launch's counters; describe_sites: a line per access site.
std::string describe(const LaunchRecord& r);
std::string describe_sites(const LaunchRecord& r);

// How many times cudaFuncSetAttribute succeeded, process-wide (the launcher sets it once per
// kernel and device).
uint64_t func_set_attribute_calls();

// Device memory: every global address a kernel touches must lie in one of these allocations.
void* device_malloc(size_t bytes, const char* label);
void device_free(void* p);

}  // namespace repsr_emu
