// Host side of the CUDA chain (fused_sr.h): argument checks, the device model, the segment plan
// (tiling.cuh, cached per shape), the workspace, the weight-packing kernel and the segment
// launches. Nothing here synchronizes the host; every launch is checked.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "../fused_sr.h"
#include "device_utils.cuh"
#include "kernels.cuh"
#include "tiling.cuh"

namespace repsr {
namespace cuda {
namespace {

// ---- Weight packing -----------------------------------------------------------------------------
constexpr int kPackMaxLayers = 32;  // layers per packing launch (the parameter block stays < 4 KB)

struct PackLayer {
  const float* weight = nullptr;  // OIHW float32 (the caller's)
  const float* bias = nullptr;
  const float* slope = nullptr;   // nullptr: no activation
  void* weight_out = nullptr;     // packed, in the compute type
  float* bias_out = nullptr;      // [calloc]
  float* slope_out = nullptr;     // [calloc]
  int32_t cin = 0, cout = 0, calloc = 0;
  int64_t weight_count = 0;  // packed weight elements
  int64_t begin = 0;         // first index of this layer in the launch's flat index space
};

struct PackParams {
  int32_t compute = 0;  // DType of the packed weights
  int32_t num = 0;
  int64_t total = 0;
  PackLayer layers[kPackMaxLayers];
};

// One thread per packed element (grid-stride): each layer owns weight_count + 2 * calloc indices
// (weights, then bias, then slope). Zeros fill every padded channel, which the kernels rely on.
__global__ void pack_weights_kernel(const __grid_constant__ PackParams p) {
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.total; i += step) {
    int l = 0;
    while (l + 1 < p.num && i >= p.layers[l + 1].begin) ++l;
    const PackLayer& L = p.layers[l];
    int64_t e = i - L.begin;
    if (e < L.weight_count) {
      int ci, tap, co;
      if (p.compute == static_cast<int32_t>(DType::kFloat32)) {
        co = static_cast<int>(e % L.calloc);
        tap = static_cast<int>((e / L.calloc) % 9);
        ci = static_cast<int>(e / (int64_t{9} * L.calloc));
      } else {
        int64_t k;
        tc_b_source(e, L.calloc, &k, &co);
        const int cin_p = tc_channels(L.cin);
        tap = static_cast<int>(k / cin_p);
        ci = static_cast<int>(k % cin_p);
      }
      const bool real = ci < L.cin && co < L.cout;
      const float w =
          ld_global_if(real, L.weight + (real ? (static_cast<int64_t>(co) * L.cin + ci) * 9 + tap : 0), 0.0f);
      if (p.compute == static_cast<int32_t>(DType::kFloat32))
        st_global(static_cast<float*>(L.weight_out) + e, w);
      else if (p.compute == static_cast<int32_t>(DType::kFloat16))
        st_global(static_cast<__half*>(L.weight_out) + e, __float2half_rn(w));
      else
        st_global(static_cast<__nv_bfloat16*>(L.weight_out) + e, __float2bfloat16_rn(w));
      continue;
    }
    e -= L.weight_count;
    if (e < L.calloc) {
      st_global(L.bias_out + e, ld_global_if(e < L.cout, L.bias + (e < L.cout ? e : 0), 0.0f));
    } else {
      e -= L.calloc;
      const bool real = L.slope != nullptr && e < L.cout;
      st_global(L.slope_out + e, ld_global_if(real, L.slope + (real ? e : 0), 0.0f));
    }
  }
}

// ---- Arguments ----------------------------------------------------------------------------------
bool is_float(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}


const char* check_args(const Net& net, const ImageRef& in, const ImageRef& out, DType compute) {
  // validate() (fused_sr_common.cpp) knows the CPU's image types; fp16/bf16 images have the same
  // shape rules, so check them as float32 and the dtype pairing here.
  ImageRef in_shape = in, out_shape = out;
  if (is_float(in_shape.dtype)) in_shape.dtype = DType::kFloat32;
  if (is_float(out_shape.dtype)) out_shape.dtype = DType::kFloat32;
  if (const char* problem = validate(net, in_shape, out_shape)) return problem;
  if (is_float(in.dtype)) {
    if (compute != in.dtype) return "compute dtype must equal the float input's dtype";
    if (out.dtype != in.dtype) return "output dtype must equal the float input's dtype";
  } else {
    if (out.dtype != DType::kUInt8) return "a uint8 input needs a uint8 output";
    if (compute != DType::kFloat32 && compute != DType::kFloat16)
      return "a uint8 input computes in float32 or float16";
  }
  return nullptr;
}

bool has_elements(const ImageRef& out) { return out.n > 0 && out.c > 0 && out.h > 0 && out.w > 0; }

ChainShape chain_shape(const Net& net, const ImageRef& in, const ImageRef& out, DType compute) {
  ChainShape s;
  s.path = compute == DType::kFloat32 ? Path::kFp32 : Path::kTensorCore;
  s.widths.push_back(net.layers[0].cin);
  for (int l = 0; l < net.num_layers; ++l) s.widths.push_back(net.layers[l].cout);
  s.n = in.n;
  s.h = in.h;
  s.w = in.w;
  s.scale = net.scale;
  s.in_bytes = dtype_bytes(in.dtype);
  s.out_bytes = dtype_bytes(out.dtype);
  s.residual = net.residual;
  return s;
}

// ---- Device model and plan cache ----------------------------------------------------------------
const char* query_device(DeviceModel* model, int* device, int* major) {
  if (cudaGetDevice(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "no current CUDA device";
  }
  int sms = 0, optin = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, *device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, *device) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, *device) != cudaSuccess ||
      cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, *device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "cannot query the device's attributes";
  }
  model->sm_count = sms;
  model->smem_per_block = optin;
  model->smem_per_sm = per_sm;
  return nullptr;
}

// Plans are pure functions of (device, chain shape); cuda_workspace_bytes and run_fused_sr_cuda
// ask for the same one back to back, and inference repeats shapes, so keep the last few.
struct PlanCache {
  std::mutex mutex;
  std::vector<std::pair<std::vector<int64_t>, ChainPlan>> entries;  // oldest first
};

std::vector<int64_t> plan_key(int device, const DeviceModel& d, const ChainShape& s,
                              PlanPolicy policy) {
  std::vector<int64_t> key = {device, d.sm_count, d.smem_per_block, d.smem_per_sm,
                              static_cast<int64_t>(s.path), s.n, s.h, s.w, s.scale, s.in_bytes,
                              s.out_bytes, s.residual ? 1 : 0, static_cast<int64_t>(policy)};
  key.insert(key.end(), s.widths.begin(), s.widths.end());
  return key;
}

// REPSR_CUDA_PLAN = cost (default) | fewest | layer: see PlanPolicy.
const char* plan_policy(PlanPolicy* policy) {
  const char* v = std::getenv("REPSR_CUDA_PLAN");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "cost") == 0) *policy = PlanPolicy::kCost;
  else if (std::strcmp(v, "fewest") == 0) *policy = PlanPolicy::kFewestSegments;
  else if (std::strcmp(v, "layer") == 0) *policy = PlanPolicy::kOneLayer;
  else return "REPSR_CUDA_PLAN must be cost, fewest or layer";
  return nullptr;
}

ChainPlan cached_plan(int device, const DeviceModel& d, const ChainShape& s, PlanPolicy policy) {
  static PlanCache cache;
  const std::vector<int64_t> key = plan_key(device, d, s, policy);
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    for (const auto& entry : cache.entries)
      if (entry.first == key) return entry.second;
  }
  ChainPlan plan = plan_chain(d, s, policy);  // outside the lock: planning takes a while
  std::lock_guard<std::mutex> lock(cache.mutex);
  if (cache.entries.size() >= 32) cache.entries.erase(cache.entries.begin());
  cache.entries.emplace_back(key, plan);
  return plan;
}

struct Prepared {
  ChainShape shape;
  ChainPlan plan;
  WorkspaceLayout layout;
  int major = 0;
  int64_t smem_limit = 0;  // the device's opt-in dynamic shared memory per block
};

const char* prepare(const Net& net, const ImageRef& in, const ImageRef& out, DType compute,
                    Prepared* prep) {
  int device = 0;
  DeviceModel model;
  if (const char* problem = query_device(&model, &device, &prep->major)) return problem;
  prep->smem_limit = model.smem_per_block;
  PlanPolicy policy;
  if (const char* problem = plan_policy(&policy)) return problem;
  prep->shape = chain_shape(net, in, out, compute);
  prep->plan = cached_plan(device, model, prep->shape, policy);
  if (prep->plan.error != nullptr) return prep->plan.error;
  prep->layout = workspace_layout(prep->shape, prep->plan);
  return nullptr;
}

// ---- Launches -----------------------------------------------------------------------------------
const char* launch_packing(const Net& net, const Prepared& prep, char* ws, DType compute,
                           cudaStream_t stream) {
  const Path path = prep.shape.path;
  for (int first = 0; first < net.num_layers; first += kPackMaxLayers) {
    PackParams pp;
    pp.compute = static_cast<int32_t>(compute);
    int64_t total = 0;
    for (int l = first; l < net.num_layers && l < first + kPackMaxLayers; ++l) {
      const ConvLayer& layer = net.layers[l];
      PackLayer& pl = pp.layers[pp.num++];
      pl.weight = layer.weight;
      pl.bias = layer.bias;
      pl.slope = layer.neg_slope;
      pl.weight_out = ws + prep.layout.weight[l];
      pl.bias_out = reinterpret_cast<float*>(ws + prep.layout.bias[l]);
      pl.slope_out = reinterpret_cast<float*>(ws + prep.layout.slope[l]);
      pl.cin = layer.cin;
      pl.cout = layer.cout;
      pl.calloc = cout_alloc(path, layer.cout);
      pl.weight_count = path == Path::kFp32 ? f32_weight_elements(layer.cin, layer.cout)
                                            : tc_weight_elements(layer.cin, layer.cout);
      pl.begin = total;
      total += pl.weight_count + 2 * int64_t{pl.calloc};
    }
    pp.total = total;
    const int64_t blocks = std::min<int64_t>(ceil_div(total, 256), 4096);
    REPSR_LAUNCH(pack_weights_kernel, "pack_weights", static_cast<unsigned int>(blocks), 256, 0, stream)(pp);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return launch_problem(err, "the weight-packing kernel failed to launch");
  }
  return nullptr;
}

const char* launch_segments(const Net& net, const ImageRef& in, const ImageRef& out,
                            const Prepared& prep, char* ws, DType compute, cudaStream_t stream) {
  const int L = net.num_layers;
  const std::vector<SegmentPlan>& segs = prep.plan.segments;
  for (size_t s = 0; s < segs.size(); ++s) {
    const SegmentPlan& seg = segs[s];
    SegmentParams p;
    p.image = in;
    p.out = out;
    p.height = in.h;
    p.width = in.w;
    p.grid = seg.grid;
    p.buf_offset[0] = seg.smem.offset[0];
    p.buf_offset[1] = seg.smem.offset[1];
    p.num_layers = seg.last - seg.first;
    p.from_image = seg.first == 0 ? 1 : 0;
    p.is_tail = seg.last == L ? 1 : 0;
    p.scale = net.scale;
    p.residual = net.residual ? 1 : 0;
    p.clamp = net.clamp ? 1 : 0;
    if (s > 0) p.map_in = ws + prep.layout.map[(s - 1) % 2];
    if (!p.is_tail) p.map_out = ws + prep.layout.map[s % 2];
    for (int l = seg.first; l < seg.last; ++l) {
      LayerDev& d = p.layers[l - seg.first];
      d.weight = ws + prep.layout.weight[l];
      d.bias = reinterpret_cast<const float*>(ws + prep.layout.bias[l]);
      d.slope = net.layers[l].neg_slope != nullptr
                    ? reinterpret_cast<const float*>(ws + prep.layout.slope[l])
                    : nullptr;
      d.cin = net.layers[l].cin;
      d.cout = net.layers[l].cout;
      const int j = l - seg.first, k = seg.last - seg.first;
      d.f32_in = f32_plane_layout(k, j, seg.th, seg.tw);
      d.f32_out = f32_plane_layout(k, j + 1, seg.th, seg.tw, p.is_tail && j == k - 1 ? net.scale : 0);
    }
    const char* problem = nullptr;
    switch (compute) {
      case DType::kFloat16:
        problem = launch_segment_f16(p, seg.smem.total, prep.smem_limit, stream);
        break;
      case DType::kBFloat16:
        problem = launch_segment_bf16(p, seg.smem.total, prep.smem_limit, stream);
        break;
      default:
        problem = launch_segment_fp32(p, seg.smem.total, prep.smem_limit, stream);
        break;
    }
    if (problem != nullptr) return problem;
  }
  return nullptr;
}

}  // namespace
}  // namespace cuda

std::size_t cuda_workspace_bytes(const Net& net, const ImageRef& in, const ImageRef& out,
                                 DType compute) {
  if (cuda::check_args(net, in, out, compute) != nullptr || !cuda::has_elements(out)) return 0;
  cuda::Prepared prep;
  if (cuda::prepare(net, in, out, compute, &prep) != nullptr) return 0;
  return static_cast<std::size_t>(prep.layout.total);
}

const char* run_fused_sr_cuda(const Net& net, const ImageRef& in, const ImageRef& out,
                              const CudaLaunch& launch) {
  if (const char* problem = cuda::check_args(net, in, out, launch.compute)) return problem;
  if (!cuda::has_elements(out)) return nullptr;  // N = 0 (or an empty image): nothing to launch
  cuda::Prepared prep;
  if (const char* problem = cuda::prepare(net, in, out, launch.compute, &prep)) return problem;
  if (launch.compute != DType::kFloat32 && prep.major < 8)
    return "float16/bfloat16 compute needs tensor cores of sm_80 or newer";
  if (launch.workspace == nullptr ||
      launch.workspace_bytes < static_cast<std::size_t>(prep.layout.total))
    return "the workspace is smaller than cuda_workspace_bytes()";
  if (reinterpret_cast<std::uintptr_t>(launch.workspace) % 16 != 0)
    return "the workspace must be 16-byte aligned";
  char* ws = static_cast<char*>(launch.workspace);
  cudaStream_t stream = static_cast<cudaStream_t>(launch.stream);
  if (const char* problem = cuda::launch_packing(net, prep, ws, launch.compute, stream)) return problem;
  return cuda::launch_segments(net, in, out, prep, ws, launch.compute, stream);
}

}  // namespace repsr
