// The CUDA emulator's execution model (see csrc/cuda/README.md, "Emulation"):
//
//   grid     blocks in a random order (Config::seed), taken by Config::workers OS threads at once;
//            each worker owns one block's shared memory and runs one block at a time.
//   block    one fiber per CUDA thread, run round-robin (in a random order) on the worker's thread.
//            A fiber runs until it reaches __syncthreads or a warp collective (ldmatrix, mma), so
//            the CUDA threads of a block interleave only where CUDA lets them synchronize.
//   barrier  completes when every live thread of the block has arrived; threads that exited or
//            wait at another __syncthreads are reported (divergent barrier) instead of hanging.
//   warp     ldmatrix / mma complete when all 32 lanes have arrived; they exchange the lanes'
//            registers exactly as the PTX ISA's fragment tables say.
//   memory   every access goes through access(): shared memory is checked against a shadow (byte
//            written in this block? by another thread since the last barrier? read by another
//            thread since then?), global memory against the registered allocations; reads and
//            writes of a launch are compared across blocks at its end. Accesses are grouped into
//            warp requests (same source line, n-th time since the last barrier) and costed by
//            memory_model.h.
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "emulator.h"
#include "fiber.h"
#include "memory_model.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REPSR_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define REPSR_EMU_ASAN 1
#endif
#if defined(REPSR_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#define REPSR_NO_ASAN __attribute__((no_sanitize_address))
#else
#define REPSR_NO_ASAN
#endif

namespace repsr_emu {
namespace {

constexpr size_t kFiberStackBytes = 256 * 1024;
constexpr int kMaxBlockThreads = 1024;
constexpr uint16_t kManyReaders = 0xffff;
constexpr int kReportsPerKind = 8;  // per launch; the rest are counted

// ---- Process-wide state -------------------------------------------------------------------------
std::mutex g_mutex;  // everything in this block
std::vector<std::string> g_reports;
std::vector<LaunchRecord> g_launches;
struct Allocation {
  uintptr_t begin, end;
  std::string label;
};
std::map<uintptr_t, Allocation> g_allocations;
std::map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
uint64_t g_func_set_attribute_calls = 0;      // successful cudaFuncSetAttribute calls
std::mutex g_launch_mutex;                      // one kernel at a time, as on one stream
uint64_t g_launch_count = 0;

thread_local cudaError_t t_last_error = cudaSuccess;

const char* access_name(Access a) {
  switch (a) {
    case Access::kSharedLoad: return "shared load";
    case Access::kSharedStore: return "shared store";
    case Access::kGlobalLoad: return "global load";
    case Access::kGlobalStore: return "global store";
  }
  return "?";
}

std::string site(const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return std::string(slash ? slash + 1 : file) + ":" + std::to_string(line);
}

[[noreturn]] void fatal(const std::string& what) {
  std::fprintf(stderr, "repsr_emu: fatal: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Bytes copied without AddressSanitizer's checks: shared memory the kernel never wrote stays
// poisoned (so that a raw, unchecked access to it is caught), and the checked path has already
// reported such a read.
REPSR_NO_ASAN void copy_unchecked(void* dst, const void* src, size_t n) {
  auto* d = static_cast<volatile unsigned char*>(dst);
  auto* s = static_cast<const volatile unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
}

void poison(const void* p, size_t n) {
#if defined(REPSR_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}
void unpoison(const void* p, size_t n) {
#if defined(REPSR_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

// Sets of byte ranges [begin, end), merged as they are inserted.
class RangeSet {
 public:
  void insert(uintptr_t begin, uintptr_t end) {
    auto it = ranges_.upper_bound(begin);
    if (it != ranges_.begin()) {
      auto prev = std::prev(it);
      if (prev->second >= begin) {
        if (prev->second >= end) return;  // already covered: the common case (weights re-read)
        begin = prev->first;
        it = ranges_.erase(prev);
      }
    }
    while (it != ranges_.end() && it->first <= end) {
      end = std::max(end, it->second);
      it = ranges_.erase(it);
    }
    ranges_.emplace(begin, end);
  }
  const std::map<uintptr_t, uintptr_t>& ranges() const { return ranges_; }
  void clear() { ranges_.clear(); }

 private:
  std::map<uintptr_t, uintptr_t> ranges_;
};

struct BlockRange {
  uintptr_t begin, end;
  uint64_t block;
};

// ---- Launch -------------------------------------------------------------------------------------
struct LaunchState {
  const char* name = "";
  dim3 grid, block;
  size_t smem = 0;
  int threads = 0;
  std::function<void()> body;
  std::vector<uint64_t> order;  // blocks to run, in the order workers take them
  std::atomic<size_t> next{0};
  std::vector<Allocation> allocations;  // sorted snapshot
  std::chrono::steady_clock::time_point deadline;

  std::mutex mutex;  // the members below
  LaunchRecord record;
  std::vector<BlockRange> reads, writes;
  std::map<std::string, uint64_t> report_counts;  // per kind
};

// ---- Worker: one OS thread's block at a time ----------------------------------------------------
enum class LaneState : uint8_t { kRunnable, kBarrier, kCollective, kDone };
enum class Collective : uint8_t { kNone, kLdmatrix, kMma };

struct Lane {
  FiberContext fiber;
  int tid = 0;
  LaneState state = LaneState::kRunnable;
  const char* wait_file = "";
  int wait_line = 0;
  Collective collective = Collective::kNone;
  uint32_t ldm_addr = 0;
  uint32_t* ldm_out = nullptr;
  float* mma_d = nullptr;
  uint32_t mma_a[4] = {0, 0, 0, 0}, mma_b[2] = {0, 0};
  MmaType mma_type = MmaType::kF16;
  std::unordered_map<uint64_t, uint32_t> occurrences;  // per access site, since the last barrier
};

struct Group {  // one warp-level memory instruction
  Access kind;
  WarpRequest request;
  const char* file = "";
  int line = 0;
};

// Per-site counters of one worker's launch, keyed by (file, line, kind); ldmatrix is kind -1.
struct SiteKey {
  const char* file;
  int line, kind;
  bool operator<(const SiteKey& o) const {
    if (file != o.file) return std::less<const char*>()(file, o.file);
    return line != o.line ? line < o.line : kind < o.kind;
  }
};
struct SiteCount {
  uint64_t requests = 0, cost = 0, ideal = 0;
};

struct Warp {
  int lanes = 32;
  int arrived = 0;
  std::unordered_map<uint64_t, size_t> index;  // (site, occurrence) -> groups[]
  std::vector<Group> groups;
};

struct ShadowByte {
  uint32_t write_epoch = 0, read_epoch = 0;
  uint16_t writer = 0, reader = 0;
  const char* write_file = "";
  int write_line = 0;
};

struct Worker {
  LaunchState* launch = nullptr;
  uint64_t block = 0;
  uint3 block_index{0, 0, 0};
  unsigned char* smem = nullptr;  // 128-byte aligned, smem_capacity bytes + a poisoned guard
  size_t smem_capacity = 0;
  std::vector<ShadowByte> shadow;
  uint32_t epoch = 0;            // current barrier interval; grows across blocks
  uint32_t block_first_epoch = 0;
  std::vector<std::unique_ptr<Lane>> lanes;
  std::vector<Warp> warps;
  FiberContext scheduler;
  int live = 0;
  int barrier_arrived = 0;
  bool abandoned = false;  // the block deadlocked: its fibers are dropped
  uint64_t accesses = 0;
  LaunchRecord counts;  // this launch's counters, merged at the end
  std::map<SiteKey, SiteCount> site_counts;
  RangeSet block_reads, block_writes;
  std::vector<BlockRange> reads, writes;  // this launch, all blocks of this worker
  std::mt19937_64 rng;

  ~Worker() {
    for (auto& lane : lanes) release_fiber_stack(&lane->fiber);
    std::free(smem);
  }

  void prepare(LaunchState* l);
  void run_block(uint64_t b);
  void schedule();
  void resume(Lane& lane);
  void yield(Lane& lane);
  void release_barrier();
  void complete_collective(Warp& w, int first_lane);
  void flush_requests();
  void diagnose_deadlock();
  void record(Lane& lane, Access kind, uint64_t addr, size_t bytes, bool active, const char* file,
              int line);
  void shared_access(Lane& lane, Access kind, const void* p, size_t bytes, void* data,
                     const char* file, int line);
  void global_access(Lane& lane, Access kind, const void* p, size_t bytes, void* data,
                     const char* file, int line);
  bool shared_read_check(Lane& lane, size_t offset, size_t bytes, const char* file, int line);
  void shared_write_mark(Lane& lane, size_t offset, size_t bytes, const char* file, int line);
  std::string where(const Lane& lane, const char* file, int line) const;
  void problem(const std::string& kind, const std::string& text);
};

thread_local Worker* t_worker = nullptr;
thread_local Lane* t_lane = nullptr;

// Worker threads live for the whole process (a thread per launch would cost the sanitizers a new
// thread state each time); launch() hands them a LaunchState and waits until all are done.
struct WorkerPool {
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable wake, done;
  LaunchState* launch = nullptr;
  uint64_t generation = 0;  // one per launch
  size_t active = 0;        // workers taking part in this launch
  size_t finished = 0;
};
// Never destroyed: its threads wait on it until the process ends.
WorkerPool& g_pool = *new WorkerPool;  // used under g_launch_mutex
void run_worker(Worker* w, LaunchState* l);
void worker_thread(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    LaunchState* l;
    {
      std::unique_lock<std::mutex> lock(g_pool.mutex);
      g_pool.wake.wait(lock, [&] { return g_pool.generation != seen && index < g_pool.active; });
      seen = g_pool.generation;
      l = g_pool.launch;
    }
    run_worker(g_pool.workers[index].get(), l);
    std::lock_guard<std::mutex> lock(g_pool.mutex);
    if (++g_pool.finished == g_pool.active) g_pool.done.notify_all();
  }
}

Lane& current_lane(const char* what) {
  if (t_lane == nullptr) fatal(std::string(what) + " called outside a kernel");
  return *t_lane;
}

void add_report(const std::string& line) {
  std::fprintf(stderr, "repsr_emu: %s\n", line.c_str());
  std::fflush(stderr);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_reports.push_back(line);
}

void Worker::problem(const std::string& kind, const std::string& text) {
  uint64_t seen;
  {
    std::lock_guard<std::mutex> lock(launch->mutex);
    seen = ++launch->report_counts[kind];
    ++launch->record.problems;
  }
  if (seen <= kReportsPerKind) add_report(kind + ": " + text);
}

std::string Worker::where(const Lane& lane, const char* file, int line) const {
  char buf[160];
  std::snprintf(buf, sizeof buf, " at %s, kernel %s, block %" PRIu64 " thread %d",
                site(file, line).c_str(), launch->name, block, lane.tid);
  return buf;
}

void lane_main(void* arg);

void Worker::prepare(LaunchState* l) {
  launch = l;
  counts = LaunchRecord{};
  site_counts.clear();
  reads.clear();
  writes.clear();
  const size_t need = (l->smem + 127) / 128 * 128;
  if (need > smem_capacity || smem == nullptr) {
    if (smem != nullptr) {
      unpoison(smem, smem_capacity + 1024);
      std::free(smem);
    }
    smem_capacity = std::max<size_t>(need, 16 * 1024);
    if (posix_memalign(reinterpret_cast<void**>(&smem), 128, smem_capacity + 1024) != 0)
      fatal("cannot allocate shared memory");
    shadow.assign(smem_capacity, ShadowByte{});
    epoch = 0;
  }
  while (static_cast<int>(lanes.size()) < l->threads) {
    auto lane = std::make_unique<Lane>();
    lane->tid = static_cast<int>(lanes.size());
    allocate_fiber_stack(&lane->fiber, kFiberStackBytes);
    lanes.push_back(std::move(lane));
  }
  warps.assign(static_cast<size_t>((l->threads + 31) / 32), Warp{});
  for (size_t w = 0; w < warps.size(); ++w)
    warps[w].lanes = std::min(32, l->threads - static_cast<int>(w) * 32);
}

void Worker::run_block(uint64_t b) {
  block = b;
  const uint64_t gx = launch->grid.x, gy = launch->grid.y;
  block_index = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                      static_cast<unsigned>(b / (gx * gy))};
  // Shared memory starts as NaN bytes (0xff.. is a NaN in fp32, fp16 and bf16), poisoned for
  // AddressSanitizer until written through the checked path; the guard behind it stays poisoned.
  unpoison(smem, smem_capacity + 1024);
  std::memset(smem, 0xff, smem_capacity + 1024);
  poison(smem, smem_capacity + 1024);
  block_first_epoch = ++epoch;
  live = launch->threads;
  barrier_arrived = 0;
  abandoned = false;
  for (Warp& w : warps) {
    w.arrived = 0;
    w.index.clear();
    w.groups.clear();
  }
  for (int t = 0; t < launch->threads; ++t) {
    Lane& lane = *lanes[t];
    if (lane.state != LaneState::kDone && lane.state != LaneState::kRunnable)
      forget_fiber_stack(&lane.fiber);  // abandoned in a deadlock: frames left behind
    lane.state = LaneState::kRunnable;
    lane.collective = Collective::kNone;
    lane.occurrences.clear();
    prepare_fiber(&lane.fiber, &lane_main, &lane);
  }
  schedule();
  flush_requests();
  ++counts.blocks_run;
  for (const auto& r : block_reads.ranges()) reads.push_back(BlockRange{r.first, r.second, b});
  for (const auto& r : block_writes.ranges()) writes.push_back(BlockRange{r.first, r.second, b});
  block_reads.clear();
  block_writes.clear();
}

void Worker::schedule() {
  std::vector<int> order(static_cast<size_t>(launch->threads));
  for (int t = 0; t < launch->threads; ++t) order[t] = t;
  std::shuffle(order.begin(), order.end(), rng);
  while (live > 0) {
    bool progressed = false;
    for (int t : order) {
      Lane& lane = *lanes[t];
      if (lane.state != LaneState::kRunnable) continue;
      resume(lane);
      progressed = true;
    }
    if (!progressed) {
      diagnose_deadlock();
      return;
    }
  }
}

void Worker::resume(Lane& lane) {
  t_lane = &lane;
  switch_fiber(&scheduler, &lane.fiber);
  t_lane = nullptr;
}

void Worker::yield(Lane& lane) {
  switch_fiber(&lane.fiber, &scheduler);
  t_lane = &lane;  // resumed by this worker's scheduler
}

void lane_main(void* arg) {
  Lane& lane = *static_cast<Lane*>(arg);
  Worker& w = *t_worker;
  fiber_started(&w.scheduler);
  w.launch->body();
  lane.state = LaneState::kDone;
  --w.live;
  switch_fiber(&lane.fiber, &w.scheduler, /*finished=*/true);
  fatal("a finished CUDA thread was resumed");
}

// ---- Barriers and collectives -------------------------------------------------------------------
void Worker::release_barrier() {
  // Where did the threads wait? One __syncthreads for all, or it is a divergent barrier.
  std::map<std::pair<const char*, int>, int> sites;
  for (int t = 0; t < launch->threads; ++t) {
    const Lane& lane = *lanes[t];
    if (lane.state == LaneState::kBarrier) ++sites[{lane.wait_file, lane.wait_line}];
  }
  const int exited = launch->threads - live;
  if (sites.size() > 1 || exited > 0) {
    std::string text = "divergent __syncthreads in kernel " + std::string(launch->name) +
                       ", block " + std::to_string(block) + ": threads wait at";
    for (const auto& s : sites)
      text += " " + site(s.first.first, s.first.second) + " (" + std::to_string(s.second) + ")";
    if (exited > 0) text += "; " + std::to_string(exited) + " threads exited without reaching it";
    problem("divergent barrier", text);
  }
  flush_requests();
  ++epoch;
  ++counts.barriers;
  barrier_arrived = 0;
  for (int t = 0; t < launch->threads; ++t) {
    Lane& lane = *lanes[t];
    lane.occurrences.clear();
    if (lane.state == LaneState::kBarrier) lane.state = LaneState::kRunnable;
  }
}

void Worker::diagnose_deadlock() {
  std::map<std::string, int> states;
  for (int t = 0; t < launch->threads; ++t) {
    const Lane& lane = *lanes[t];
    std::string s;
    switch (lane.state) {
      case LaneState::kBarrier: s = "at __syncthreads " + site(lane.wait_file, lane.wait_line); break;
      case LaneState::kCollective:
        s = std::string(lane.collective == Collective::kMma ? "at mma " : "at ldmatrix ") +
            site(lane.wait_file, lane.wait_line) + " (warp " + std::to_string(lane.tid / 32) + ")";
        break;
      case LaneState::kDone: s = "exited"; break;
      case LaneState::kRunnable: s = "runnable"; break;
    }
    ++states[s];
  }
  std::string text = "kernel " + std::string(launch->name) + ", block " + std::to_string(block) +
                     " can never finish:";
  for (const auto& s : states) text += " " + std::to_string(s.second) + " threads " + s.first + ";";
  const bool warp_problem = std::any_of(lanes.begin(), lanes.begin() + launch->threads,
                                        [](const std::unique_ptr<Lane>& l) {
                                          return l->state == LaneState::kCollective;
                                        });
  problem(warp_problem ? "incomplete warp collective" : "divergent barrier", text);
  abandoned = true;
}

// PTX ISA 8.x, section 9.7.9.x "Warp-level matrix load instruction: ldmatrix": with .x4, threads
// 8m..8m+7 supply the row addresses of matrix m (each row 8 .b16 elements, 16 contiguous bytes);
// in the result, each thread's register m holds, of matrix m, row laneid / 4, elements
// 2 * (laneid % 4) and 2 * (laneid % 4) + 1 (the first in the lower 16 bits) ("Figure: ldmatrix
// fragment layout for one 8x8 matrix with 16-bit elements").
void do_ldmatrix(Worker& w, Lane* const* lane) {
  uint16_t rows[4][8][8];
  WarpRequest req;
  req.bytes = 16;
  req.active = 0xffffffffu;
  for (int src = 0; src < 32; ++src) {
    Lane& l = *lane[src];
    const size_t off = l.ldm_addr;
    req.addr[src] = off;
    uint16_t* row = rows[src / 8][src % 8];
    std::memset(row, 0, 16);
    if (off % 16 != 0 || off + 16 > w.launch->smem) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "ldmatrix row address %zu (lane %d) is %s", off, src,
                    off % 16 != 0 ? "not 16-byte aligned" : "outside the block's dynamic shared memory");
      w.problem("shared out of bounds", buf + w.where(l, l.wait_file, l.wait_line));
      continue;
    }
    w.shared_read_check(l, off, 16, l.wait_file, l.wait_line);
    copy_unchecked(row, w.smem + off, 16);
  }
  for (int dst = 0; dst < 32; ++dst) {
    const int r = dst / 4, c = 2 * (dst % 4);
    for (int m = 0; m < 4; ++m)
      lane[dst]->ldm_out[m] = uint32_t{rows[m][r][c]} | (uint32_t{rows[m][r][c + 1]} << 16);
  }
  if (config().counters) {
    const SharedCost cost = shared_cost(req);
    w.counts.ldmatrix.requests += 1;
    w.counts.ldmatrix.wavefronts += cost.wavefronts;
    w.counts.ldmatrix.ideal_wavefronts += cost.ideal;
    w.counts.ldmatrix.bytes += 32 * 16;
    SiteCount& sc = w.site_counts[SiteKey{lane[0]->wait_file, lane[0]->wait_line, -1}];
    sc.requests += 1, sc.cost += cost.wavefronts, sc.ideal += cost.ideal;
  }
}

double element(uint32_t reg, int half, MmaType type) {
  const uint16_t bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  return type == MmaType::kF16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}

// PTX ISA 8.x, section 9.7.13.4.8 "Matrix Fragments for mma.m16n8k16 with floating point type"
// (groupID = laneid >> 2, threadID_in_group = laneid % 4):
//   A (16x16, .f16x2 registers a0..a3 holding elements a0..a7): row = groupID for a0, a1, a4, a5
//     and groupID + 8 for a2, a3, a6, a7; col = threadID_in_group * 2 + (i & 1) for a0..a3 and
//     the same + 8 for a4..a7.
//   B (16x8, registers b0, b1 holding b0..b3): row = threadID_in_group * 2 + (i & 1) for b0, b1
//     and the same + 8 for b2, b3; col = groupID.
//   C, D (16x8 .f32, c0..c3): row = groupID for c0, c1 and groupID + 8 for c2, c3;
//     col = threadID_in_group * 2 + (i & 1).
// D = A * B + C is computed in double and rounded once to float: the hardware's accumulation order
// and intermediate precision are not modelled.
void do_mma(Lane* const* lane) {
  const MmaType type = lane[0]->mma_type;
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const Lane& x = *lane[l];
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = element(x.mma_a[i / 2], i & 1, type);
    }
    for (int i = 0; i < 4; ++i) B[t * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = element(x.mma_b[i / 2], i & 1, type);
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][t * 2 + (i & 1)] = x.mma_d[i];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
      double sum = C[row][col];
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      lane[l]->mma_d[i] = static_cast<float>(sum);
    }
  }
}

void Worker::complete_collective(Warp& w, int first_lane) {
  Lane* lane[32];
  for (int i = 0; i < 32; ++i) lane[i] = lanes[first_lane + i].get();
  // .sync.aligned: every lane executes the same instruction.
  bool same = true;
  for (int i = 1; i < 32; ++i)
    same = same && lane[i]->collective == lane[0]->collective &&
           lane[i]->wait_line == lane[0]->wait_line && lane[i]->wait_file == lane[0]->wait_file &&
           lane[i]->mma_type == lane[0]->mma_type;
  if (!same)
    problem("divergent warp collective",
            "lanes of warp " + std::to_string(first_lane / 32) +
                " reached different ldmatrix/mma instructions" +
                where(*lane[0], lane[0]->wait_file, lane[0]->wait_line));
  if (lane[0]->collective == Collective::kLdmatrix) {
    do_ldmatrix(*this, lane);
  } else {
    do_mma(lane);
    ++counts.mma;
  }
  w.arrived = 0;
  for (int i = 0; i < 32; ++i) {
    lane[i]->state = LaneState::kRunnable;
    lane[i]->collective = Collective::kNone;
  }
}

// A lane arrives at a warp collective: the 32nd executes it for all, the others wait.
void arrive(Lane& lane, Collective kind, const char* file, int line) {
  Worker& w = *t_worker;
  Warp& warp = w.warps[static_cast<size_t>(lane.tid / 32)];
  if (warp.lanes != 32) fatal("warp collectives need full warps (the block size is not a multiple of 32)");
  lane.state = LaneState::kCollective;
  lane.collective = kind;
  lane.wait_file = file;
  lane.wait_line = line;
  if (++warp.arrived == 32)
    w.complete_collective(warp, lane.tid / 32 * 32);
  else
    w.yield(lane);
}

// ---- Memory -------------------------------------------------------------------------------------
uint64_t site_key(const char* file, int line, Access kind) {
  return (reinterpret_cast<uintptr_t>(file) * 0x9e3779b97f4a7c15ull) ^
         (static_cast<uint64_t>(line) << 2) ^ static_cast<uint64_t>(kind);
}

void Worker::record(Lane& lane, Access kind, uint64_t addr, size_t bytes, bool active,
                    const char* file, int line) {
  const uint64_t key = site_key(file, line, kind);
  const uint32_t occurrence = lane.occurrences[key]++;
  Warp& w = warps[static_cast<size_t>(lane.tid / 32)];
  const uint64_t group_key = key * 0x100000001b3ull + occurrence;
  auto found = w.index.find(group_key);
  size_t g;
  if (found == w.index.end()) {
    g = w.groups.size();
    w.index.emplace(group_key, g);
    Group group;
    group.kind = kind;
    group.file = file;
    group.line = line;
    group.request.bytes = static_cast<int>(bytes);
    w.groups.push_back(group);
  } else {
    g = found->second;
  }
  if (active) {
    WarpRequest& r = w.groups[g].request;
    r.addr[lane.tid % 32] = addr;
    r.active |= 1u << (lane.tid % 32);
  }
}

void Worker::flush_requests() {
  if (!config().counters) return;
  for (Warp& w : warps) {
    for (const Group& g : w.groups) {
      if (g.request.active == 0) continue;  // every lane predicated off: no instruction issued
      const uint64_t lanes_on = static_cast<uint64_t>(__builtin_popcount(g.request.active));
      if (g.kind == Access::kSharedLoad || g.kind == Access::kSharedStore) {
        SharedCounter& c = g.kind == Access::kSharedLoad ? counts.shared_load : counts.shared_store;
        const SharedCost cost = shared_cost(g.request);
        c.requests += 1;
        c.wavefronts += cost.wavefronts;
        c.ideal_wavefronts += cost.ideal;
        c.bytes += lanes_on * g.request.bytes;
        SiteCount& sc = site_counts[SiteKey{g.file, g.line, static_cast<int>(g.kind)}];
        sc.requests += 1, sc.cost += cost.wavefronts, sc.ideal += cost.ideal;
      } else {
        GlobalCounter& c = g.kind == Access::kGlobalLoad ? counts.global_load : counts.global_store;
        const GlobalCost cost = global_cost(g.request);
        c.requests += 1;
        c.sectors += cost.sectors;
        c.useful_bytes += cost.useful_bytes;
        SiteCount& sc = site_counts[SiteKey{g.file, g.line, static_cast<int>(g.kind)}];
        sc.requests += 1, sc.cost += cost.sectors, sc.ideal += (cost.useful_bytes + 31) / 32;
      }
    }
    w.index.clear();
    w.groups.clear();
  }
}

bool Worker::shared_read_check(Lane& lane, size_t offset, size_t bytes, const char* file, int line) {
  bool uninitialized = false, raced = false;
  const ShadowByte* writer = nullptr;
  for (size_t i = 0; i < bytes; ++i) {
    ShadowByte& s = shadow[offset + i];
    if (s.write_epoch < block_first_epoch) {
      uninitialized = true;
    } else if (s.write_epoch == epoch && s.writer != lane.tid) {
      raced = true;
      writer = &s;
    }
    if (s.read_epoch == epoch) {
      if (s.reader != lane.tid) s.reader = kManyReaders;
    } else {
      s.read_epoch = epoch;
      s.reader = static_cast<uint16_t>(lane.tid);
    }
  }
  char buf[160];
  if (uninitialized) {
    std::snprintf(buf, sizeof buf, "read of shared bytes [%zu, %zu) that this block never wrote",
                  offset, offset + bytes);
    problem("uninitialized shared read", buf + where(lane, file, line));
  }
  if (raced) {
    std::snprintf(buf, sizeof buf,
                  "read-after-write race on shared bytes [%zu, %zu): thread %d wrote them at %s "
                  "with no __syncthreads between",
                  offset, offset + bytes, writer->writer, site(writer->write_file, writer->write_line).c_str());
    problem("shared race", buf + where(lane, file, line));
  }
  return !(uninitialized || raced);
}

void Worker::shared_write_mark(Lane& lane, size_t offset, size_t bytes, const char* file, int line) {
  bool waw = false, war = false;
  const ShadowByte* other = nullptr;
  int reader = -1;
  for (size_t i = 0; i < bytes; ++i) {
    ShadowByte& s = shadow[offset + i];
    if (s.write_epoch == epoch && s.writer != lane.tid) {
      waw = true;
      other = &s;
    }
    if (s.read_epoch == epoch && s.reader != lane.tid) {
      war = true;
      reader = s.reader;
    }
    s.write_epoch = epoch;
    s.writer = static_cast<uint16_t>(lane.tid);
    s.write_file = file;
    s.write_line = line;
  }
  char buf[200];
  if (waw) {
    std::snprintf(buf, sizeof buf,
                  "write-after-write race on shared bytes [%zu, %zu): thread %d wrote them at %s "
                  "with no __syncthreads between",
                  offset, offset + bytes, other->writer, site(other->write_file, other->write_line).c_str());
    problem("shared race", buf + where(lane, file, line));
  }
  if (war) {
    std::snprintf(buf, sizeof buf,
                  "write-after-read race on shared bytes [%zu, %zu): %s read them since the last "
                  "__syncthreads",
                  offset, offset + bytes,
                  reader == kManyReaders ? "other threads" : ("thread " + std::to_string(reader)).c_str());
    problem("shared race", buf + where(lane, file, line));
  }
}

void Worker::shared_access(Lane& lane, Access kind, const void* p, size_t bytes, void* data,
                           const char* file, int line) {
  // Addresses compared as integers: a wild pointer need not point into any object.
  const intptr_t offset = static_cast<intptr_t>(reinterpret_cast<uintptr_t>(p) -
                                                reinterpret_cast<uintptr_t>(smem));
  const bool inside = offset >= 0 && static_cast<size_t>(offset) + bytes <= launch->smem;
  if (!inside || offset % static_cast<intptr_t>(bytes) != 0) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s of %zu bytes at shared offset %td %s (%zu bytes of dynamic shared memory)",
                  access_name(kind), bytes, offset,
                  inside ? "is misaligned" : "is out of bounds", launch->smem);
    problem("shared out of bounds", buf + where(lane, file, line));
    return;
  }
  if (kind == Access::kSharedLoad) {
    shared_read_check(lane, static_cast<size_t>(offset), bytes, file, line);
    copy_unchecked(data, p, bytes);  // never-written bytes read as NaN
  } else {
    shared_write_mark(lane, static_cast<size_t>(offset), bytes, file, line);
    unpoison(p, bytes);
    copy_unchecked(const_cast<void*>(p), data, bytes);
  }
}

void Worker::global_access(Lane& lane, Access kind, const void* p, size_t bytes, void* data,
                           const char* file, int line) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = a + bytes;
  const std::vector<Allocation>& allocs = launch->allocations;
  auto it = std::upper_bound(allocs.begin(), allocs.end(), a,
                             [](uintptr_t x, const Allocation& al) { return x < al.begin; });
  const Allocation* in = nullptr;
  if (it != allocs.begin() && std::prev(it)->end >= b && std::prev(it)->begin <= a) in = &*std::prev(it);
  if (in == nullptr || a % bytes != 0) {
    char buf[256];
    if (in == nullptr) {
      std::string nearest = "no allocation";
      if (it != allocs.begin()) {
        const Allocation& prev = *std::prev(it);
        nearest = std::to_string(static_cast<long long>(a - prev.begin)) + " bytes from the start of '" +
                  prev.label + "' (" + std::to_string(prev.end - prev.begin) + " bytes)";
      }
      std::snprintf(buf, sizeof buf, "%s of %zu bytes at %#" PRIxPTR " is out of bounds: %s",
                    access_name(kind), bytes, a, nearest.c_str());
    } else {
      std::snprintf(buf, sizeof buf, "%s of %zu bytes at %#" PRIxPTR " in '%s' is misaligned",
                    access_name(kind), bytes, a, in->label.c_str());
    }
    problem("global out of bounds", buf + where(lane, file, line));
    return;
  }
  if (kind == Access::kGlobalLoad) {
    block_reads.insert(a, b);
    std::memcpy(data, p, bytes);
  } else {
    block_writes.insert(a, b);
    std::memcpy(const_cast<void*>(p), data, bytes);
  }
}

// Races between blocks of one launch: two blocks writing the same byte, or a block reading (through
// the read-only path) a byte that any block writes in the same launch.
void check_launch_ranges(LaunchState& l) {
  auto by_begin = [](const BlockRange& x, const BlockRange& y) { return x.begin < y.begin; };
  std::sort(l.writes.begin(), l.writes.end(), by_begin);
  uint64_t reported = 0;
  auto report = [&](const std::string& kind, const std::string& text) {
    if (++reported <= kReportsPerKind) add_report(kind + ": " + text);
    ++l.record.problems;
  };
  char buf[256];
  // Overlapping writes: sweep with the furthest end seen so far.
  const BlockRange* reach = nullptr;
  for (const BlockRange& w : l.writes) {
    if (reach != nullptr && w.begin < reach->end && w.block != reach->block) {
      std::snprintf(buf, sizeof buf,
                    "write-write race between blocks %" PRIu64 " and %" PRIu64 " of kernel %s on "
                    "global bytes [%#" PRIxPTR ", %#" PRIxPTR ")",
                    reach->block, w.block, l.name, w.begin, std::min(w.end, reach->end));
      report("global race", buf);
    }
    if (reach == nullptr || w.end > reach->end) reach = &w;
  }
  // Read-only loads of written bytes.
  for (const BlockRange& r : l.reads) {
    auto it = std::lower_bound(l.writes.begin(), l.writes.end(), r.end,
                               [](const BlockRange& w, uintptr_t x) { return w.begin < x; });
    // Any write starting before r.end and ending after r.begin overlaps; writes are disjoint
    // unless already reported, so scanning back from `it` stops at the first that ends too early.
    while (it != l.writes.begin()) {
      --it;
      if (it->end <= r.begin) break;
      std::snprintf(buf, sizeof buf,
                    "block %" PRIu64 " of kernel %s reads global bytes [%#" PRIxPTR ", %#" PRIxPTR
                    ") through the read-only path (__ldg) that block %" PRIu64 " writes in the same launch",
                    r.block, l.name, std::max(r.begin, it->begin), std::min(r.end, it->end), it->block);
      report("global race", buf);
      break;
    }
  }
}

void run_worker(Worker* w, LaunchState* l) {
  t_worker = w;
  adopt_thread_as_fiber(&w->scheduler);
  for (;;) {
    const size_t i = l->next.fetch_add(1);
    if (i >= l->order.size()) break;
    w->run_block(l->order[i]);
  }
  std::lock_guard<std::mutex> lock(l->mutex);
  LaunchRecord& r = l->record;
  auto add_shared = [](SharedCounter& a, const SharedCounter& b) {
    a.requests += b.requests, a.wavefronts += b.wavefronts, a.ideal_wavefronts += b.ideal_wavefronts,
        a.bytes += b.bytes;
  };
  auto add_global = [](GlobalCounter& a, const GlobalCounter& b) {
    a.requests += b.requests, a.sectors += b.sectors, a.useful_bytes += b.useful_bytes;
  };
  add_shared(r.shared_load, w->counts.shared_load);
  add_shared(r.shared_store, w->counts.shared_store);
  add_shared(r.ldmatrix, w->counts.ldmatrix);
  add_global(r.global_load, w->counts.global_load);
  add_global(r.global_store, w->counts.global_store);
  r.mma += w->counts.mma;
  r.barriers += w->counts.barriers;
  r.blocks_run += w->counts.blocks_run;
  for (const auto& [key, count] : w->site_counts) {
    const std::string where = site(key.file, key.line);
    const std::string kind = key.kind < 0 ? "ldmatrix" : access_name(static_cast<Access>(key.kind));
    auto it = std::find_if(r.sites.begin(), r.sites.end(),
                           [&](const SiteRecord& x) { return x.site == where && x.kind == kind; });
    if (it == r.sites.end()) {
      r.sites.push_back(SiteRecord{where, kind, 0, 0, 0});
      it = r.sites.end() - 1;
    }
    it->requests += count.requests, it->cost += count.cost, it->ideal += count.ideal;
  }
  l->reads.insert(l->reads.end(), w->reads.begin(), w->reads.end());
  l->writes.insert(l->writes.end(), w->writes.begin(), w->writes.end());
  t_worker = nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

}  // namespace

// ---- Public: configuration, memory, results -------------------------------------------------------
Config& config() {
  static Config c = [] {
    Config d;
    d.seed = static_cast<uint64_t>(env_int("REPSR_EMU_SEED", 1));
    d.workers = std::max(1, env_int("REPSR_EMU_WORKERS", 2));
    return d;
  }();
  return c;
}

void* device_malloc(size_t bytes, const char* label) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, std::max<size_t>(bytes, 1)) != 0) fatal("device_malloc: out of memory");
  std::memset(p, 0xff, std::max<size_t>(bytes, 1));  // like fresh device memory: garbage, not zeros
  std::lock_guard<std::mutex> lock(g_mutex);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  g_allocations[a] = Allocation{a, a + bytes, label ? label : "?"};
  return p;
}

void device_free(void* p) {
  if (p == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_allocations.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
}

std::vector<LaunchRecord> take_launches() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<LaunchRecord> out;
  out.swap(g_launches);
  return out;
}

std::vector<std::string> take_reports() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> out;
  out.swap(g_reports);
  return out;
}

std::string describe(const LaunchRecord& r) {
  char buf[512];
  auto conflicts = [](const SharedCounter& c) {
    return c.ideal_wavefronts ? double(c.wavefronts) / double(c.ideal_wavefronts) : 1.0;
  };
  std::snprintf(buf, sizeof buf,
                "%s grid %u block %u smem %zu: ldmatrix %" PRIu64 " (x%.2f wavefronts), shared ld %" PRIu64
                " (x%.2f) st %" PRIu64 " (x%.2f), global ld %" PRIu64 " req %" PRIu64
                " sectors (%.0f%% useful) st %" PRIu64 " req %" PRIu64 " sectors (%.0f%% useful), mma %" PRIu64
                ", barriers %" PRIu64,
                r.name.c_str(), r.grid.x, r.block.x, r.dynamic_smem, r.ldmatrix.requests,
                conflicts(r.ldmatrix), r.shared_load.requests, conflicts(r.shared_load),
                r.shared_store.requests, conflicts(r.shared_store), r.global_load.requests,
                r.global_load.sectors, 100 * r.global_load.efficiency(), r.global_store.requests,
                r.global_store.sectors, 100 * r.global_store.efficiency(), r.mma, r.barriers);
  return buf;
}

std::string describe_sites(const LaunchRecord& r) {
  std::string text;
  for (const SiteRecord& x : r.sites) {
    char buf[256];
    const bool global = x.kind.rfind("global", 0) == 0;
    std::snprintf(buf, sizeof buf, "%-40s %-13s %10" PRIu64 " req  %s %.2f\n", x.site.c_str(), x.kind.c_str(),
                  x.requests, global ? "sector efficiency" : "wavefronts / ideal",
                  global ? (x.cost ? double(x.ideal) / double(x.cost) : 1.0)
                         : (x.ideal ? double(x.cost) / double(x.ideal) : 1.0));
    text += buf;
  }
  return text;
}

// ---- Device-side hooks ----------------------------------------------------------------------------
uint3 thread_idx() {
  const Lane& lane = current_lane("threadIdx");
  const dim3 b = t_worker->launch->block;
  const unsigned t = static_cast<unsigned>(lane.tid);
  return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}
uint3 block_idx() {
  current_lane("blockIdx");
  return t_worker->block_index;
}
dim3 block_dim() {
  current_lane("blockDim");
  return t_worker->launch->block;
}
dim3 grid_dim() {
  current_lane("gridDim");
  return t_worker->launch->grid;
}

unsigned char* dynamic_smem() {
  current_lane("the dynamic shared memory declaration");
  return t_worker->smem;
}

size_t shared_offset(const void* p) {
  current_lane("__cvta_generic_to_shared");
  return reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(t_worker->smem);
}

void syncthreads(const char* file, int line) {
  Lane& lane = current_lane("__syncthreads");
  Worker& w = *t_worker;
  lane.state = LaneState::kBarrier;
  lane.wait_file = file;
  lane.wait_line = line;
  if (++w.barrier_arrived == w.live)
    w.release_barrier();
  else
    w.yield(lane);
}

void trap(const char* file, int line) {
  const Lane* lane = t_lane;
  fatal("__trap() at " + site(file, line) +
        (lane ? ", kernel " + std::string(t_worker->launch->name) + ", block " +
                    std::to_string(t_worker->block) + " thread " + std::to_string(lane->tid)
              : std::string()));
}

void access(Access kind, const void* p, size_t bytes, bool active, void* data, const char* file,
            int line) {
  Lane& lane = current_lane("a device memory access");
  Worker& w = *t_worker;
  if ((++w.accesses & 0xfff) == 0 && std::chrono::steady_clock::now() > w.launch->deadline)
    fatal("kernel " + std::string(w.launch->name) + " ran past the emulator's time limit (" +
          std::to_string(config().timeout_s) + " s; Config::timeout_s)");
  const bool shared = kind == Access::kSharedLoad || kind == Access::kSharedStore;
  if (config().counters)
    w.record(lane, kind,
             shared ? reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(w.smem)
                    : reinterpret_cast<uintptr_t>(p),
             bytes, active, file, line);
  if (!active) return;
  if (shared)
    w.shared_access(lane, kind, p, bytes, data, file, line);
  else
    w.global_access(lane, kind, p, bytes, data, file, line);
}

void ldmatrix_x4(uint32_t (&r)[4], uint32_t shared_addr, const char* file, int line) {
  Lane& lane = current_lane("ldmatrix");
  lane.ldm_addr = shared_addr;
  lane.ldm_out = r;
  arrive(lane, Collective::kLdmatrix, file, line);
}

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, MmaType type,
                  const char* file, int line) {
  Lane& lane = current_lane("mma");
  lane.mma_d = d;
  std::memcpy(lane.mma_a, a, sizeof lane.mma_a);
  lane.mma_b[0] = b0;
  lane.mma_b[1] = b1;
  lane.mma_type = type;
  arrive(lane, Collective::kMma, file, line);
}

cudaError_t launch(const char* name, const void* func, dim3 grid, dim3 block, size_t dynamic_smem,
                   cudaStream_t stream, std::function<void()> body) {
  (void)stream;  // one stream: launches run to completion in call order
  const Config& cfg = config();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  int max_dynamic = cfg.smem_per_block;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_max_dynamic_smem.find(func);
    if (it != g_max_dynamic_smem.end()) max_dynamic = it->second;
  }
  cudaError_t error = cudaSuccess;
  if (threads == 0 || threads > kMaxBlockThreads || blocks == 0 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535)
    error = cudaErrorInvalidConfiguration;
  else if (dynamic_smem > static_cast<size_t>(max_dynamic))
    error = cudaErrorInvalidValue;  // as the runtime does: more than the kernel's limit
  if (error != cudaSuccess) {
    t_last_error = error;
    LaunchRecord r;
    r.name = name;
    r.grid = grid;
    r.block = block;
    r.dynamic_smem = dynamic_smem;
    r.error = error;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_launches.push_back(r);
    return error;
  }

  std::lock_guard<std::mutex> serial(g_launch_mutex);
  LaunchState l;
  l.name = name;
  l.grid = grid;
  l.block = block;
  l.smem = dynamic_smem;
  l.threads = static_cast<int>(threads);
  l.body = std::move(body);
  l.record.name = name;
  l.record.grid = grid;
  l.record.block = block;
  l.record.dynamic_smem = dynamic_smem;
  l.deadline = std::chrono::steady_clock::now() +
               std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_s * 1000));
  for (uint64_t b = 0; b < blocks; ++b)
    if (!cfg.block_filter || cfg.block_filter(l.name, b, blocks)) l.order.push_back(b);
  const uint64_t launch_seed = cfg.seed * 0x9e3779b97f4a7c15ull + (++g_launch_count);
  std::mt19937_64 rng(launch_seed);
  std::shuffle(l.order.begin(), l.order.end(), rng);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const auto& a : g_allocations) l.allocations.push_back(a.second);
  }

  const size_t nworkers = std::max<size_t>(1, std::min<size_t>(cfg.workers, l.order.size()));
  {
    std::unique_lock<std::mutex> lock(g_pool.mutex);
    while (g_pool.workers.size() < nworkers) {
      g_pool.workers.push_back(std::make_unique<Worker>());
      g_pool.threads.emplace_back(worker_thread, g_pool.threads.size());
      g_pool.threads.back().detach();  // idle until the process exits
    }
    for (size_t i = 0; i < nworkers; ++i) {
      Worker* w = g_pool.workers[i].get();
      w->prepare(&l);
      w->rng.seed(launch_seed + 1000003 * (i + 1));
    }
    g_pool.launch = &l;
    g_pool.active = nworkers;
    g_pool.finished = 0;
    ++g_pool.generation;
    g_pool.wake.notify_all();
    g_pool.done.wait(lock, [&] { return g_pool.finished == nworkers; });
    g_pool.launch = nullptr;
  }
  check_launch_ranges(l);
  for (const auto& kind : l.report_counts)
    if (kind.second > kReportsPerKind)
      add_report(kind.first + ": " + std::to_string(kind.second - kReportsPerKind) +
                 " more in kernel " + name + " (not shown)");
  if (std::getenv("REPSR_EMU_PRINT_COUNTERS") != nullptr)
    std::fprintf(stderr, "repsr_emu: %s\n", describe(l.record).c_str());
  std::lock_guard<std::mutex> lock(g_mutex);
  g_launches.push_back(l.record);
  t_last_error = cudaSuccess;
  return cudaSuccess;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > config().smem_per_block_optin) {
    t_last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic_smem[func] = value;
  ++g_func_set_attribute_calls;
  return cudaSuccess;
}

uint64_t func_set_attribute_calls() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_func_set_attribute_calls;
}

cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* func) {
  const Config& cfg = config();
  *attr = cudaFuncAttributes{};
  attr->ptxVersion = cfg.kernel_ptx_version;
  // An image for an older architecture runs JIT-compiled from its PTX for this device.
  attr->binaryVersion = std::max(cfg.kernel_ptx_version, cfg.cc_major * 10 + cfg.cc_minor);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_max_dynamic_smem.find(func);
  attr->maxDynamicSharedSizeBytes = it != g_max_dynamic_smem.end() ? it->second : cfg.smem_per_block;
  return cudaSuccess;
}

}  // namespace repsr_emu

// ---- Runtime API ----------------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  const cudaError_t e = repsr_emu::t_last_error;
  repsr_emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return repsr_emu::t_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = repsr_emu::config().device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const repsr_emu::Config& c = repsr_emu::config();
  if (device < 0 || device >= 8) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = c.smem_per_block; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = c.sm_count; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = c.cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = c.cc_minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = c.smem_per_sm; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = c.smem_per_block_optin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
