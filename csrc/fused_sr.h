// Torch-free description of a deployed RepSR / SRVGG-compact network and the entry points of the
// fused kernel chains. Nothing here includes torch: the CMake build compiles and tests the kernels
// against a naive reference without libtorch, and csrc/ops.cpp is the only file that sees tensors.
#pragma once

#include <cstddef>
#include <cstdint>

namespace repsr {

// Image element types. The CPU chain reads/writes kFloat32 and kUInt8; the CUDA chain also runs
// kFloat16 / kBFloat16 images (tensor cores, float32 accumulation).
enum class DType : int32_t { kFloat32 = 0, kUInt8 = 1, kFloat16 = 2, kBFloat16 = 3 };

// A strided 4-D image. Element (n, c, y, x) lives at
//   static_cast<T*>(data) + n * stride_n + c * stride_c + y * stride_h + x * stride_w
// (strides in elements, as torch reports them), so NCHW, channels_last, non-contiguous views
// and HWC uint8 images (stride_c = 1, stride_w = C, stride_h = W * C) all go through one loader.
// uint8 images hold values in [0, 255] that mean [0, 1].
struct ImageRef {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t stride_n = 0, stride_c = 0, stride_h = 0, stride_w = 0;
};

// One 3x3 conv (stride 1, zero padding 1, with bias) followed by an optional activation.
// Every activation of a deployed net is one form, y = v >= 0 ? v : neg_slope[c] * v:
// identity = 1, ReLU = 0, LeakyReLU = its slope, PReLU = its per-channel weights.
struct ConvLayer {
  int32_t cin = 0, cout = 0;
  const float* weight = nullptr;     // [cout][cin][3][3], PyTorch's OIHW layout, contiguous
  const float* bias = nullptr;       // [cout]
  const float* neg_slope = nullptr;  // [cout], or nullptr for no activation
};

// The deployed chain: layers[0] is the head (cin = in channels), layers[num_layers - 1] the tail
// (cout = out_channels * scale * scale, no activation). The tail output goes through a pixel
// shuffle by `scale`; with `residual`, the nearest-upsampled input is added (then in channels ==
// out channels); with `clamp`, the result is clamped to [0, 1]. A uint8 output is always clamped,
// then rounded half-to-even after scaling by 255.
struct Net {
  const ConvLayer* layers = nullptr;
  int32_t num_layers = 0;
  int32_t scale = 1;
  bool residual = true;
  bool clamp = false;
};

// Checks that `net`, `in` and `out` agree (channels, sizes, scale). Returns nullptr when they do,
// else a static message naming the problem.
const char* validate(const Net& net, const ImageRef& in, const ImageRef& out);

// ---- CPU ---------------------------------------------------------------------------------------
// The chain runs as independent work items (batch x spatial tiles), so the caller chooses the
// threading: the torch binding drives them with at::parallel_for, the C++ tests with a plain loop.
class CpuChain {
 public:
  // Packs the weights once for this call; `tile_h`/`tile_w` <= 0 picks a tile from the cost model.
  CpuChain(const Net& net, const ImageRef& in, const ImageRef& out, int tile_h = 0, int tile_w = 0);
  ~CpuChain();
  CpuChain(const CpuChain&) = delete;
  CpuChain& operator=(const CpuChain&) = delete;

  int64_t num_work_items() const;
  // Runs work items [begin, end). Thread-safe: each call uses its own scratch buffer.
  void run(int64_t begin, int64_t end) const;
  int tile_h() const;
  int tile_w() const;
  const char* isa() const;  // "avx512", "avx2" or "portable": the inner loop this machine runs
  static const char* detected_isa();  // the same, without building a chain

 private:
  struct Impl;
  Impl* impl_;
};

// ---- CUDA --------------------------------------------------------------------------------------
// Only CUDA builds define these (csrc/cuda/). Layer pointers (weight, bias, neg_slope) and image
// data are device pointers; weights are float32 as in ConvLayer and are converted/packed on the
// device into `workspace` by the launch itself. `compute` picks the arithmetic: kFloat32 (CUDA
// cores) or kFloat16 / kBFloat16 (tensor cores, float32 accumulation); it must match a float
// input's dtype, and is kFloat32 or kFloat16 for uint8 images.
struct CudaLaunch {
  DType compute = DType::kFloat32;
  void* workspace = nullptr;        // device memory of at least cuda_workspace_bytes(...)
  std::size_t workspace_bytes = 0;
  void* stream = nullptr;           // a cudaStream_t; nullptr = the legacy default stream
};

// Device memory the launch needs for packed weights and segment boundaries; call first, allocate
// with the caller's allocator (the torch binding uses the caching allocator).
std::size_t cuda_workspace_bytes(const Net& net, const ImageRef& in, const ImageRef& out,
                                 DType compute);

// Launches the fused chain on launch.stream; never synchronizes the host; checks every launch.
// Returns nullptr on success, else a static message naming the failure.
const char* run_fused_sr_cuda(const Net& net, const ImageRef& in, const ImageRef& out,
                              const CudaLaunch& launch);

}  // namespace repsr
