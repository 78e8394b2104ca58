// The CUDA registration of the repsr_ext ops (the schema and the CPU kernels are in ops.cpp). Only
// CUDA builds compile this file; the kernels themselves are torch-free (csrc/cuda/).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "binding.h"

namespace repsr {
namespace {

void run_cuda_chain(const Net& net, const ImageRef& in, const ImageRef& out, DType compute,
                    const at::Tensor& like) {
  const std::size_t bytes = cuda_workspace_bytes(net, in, out, compute);
  // The caching allocator hands the workspace back to this stream's pool when `workspace` goes out
  // of scope; work queued later on the same stream is ordered after the kernels that use it.
  at::Tensor workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))},
                                   like.options().dtype(at::kByte));
  CudaLaunch launch;
  launch.compute = compute;
  launch.workspace = workspace.data_ptr();
  launch.workspace_bytes = bytes;
  launch.stream = at::cuda::getCurrentCUDAStream().stream();
  const char* problem = run_fused_sr_cuda(net, in, out, launch);
  TORCH_CHECK(problem == nullptr, "repsr_ext (CUDA): ", problem ? problem : "");
}

at::Tensor fused_sr_cuda(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                         at::TensorList neg_slopes, int64_t scale, bool residual, bool clamp) {
  check_float_input(input);
  TORCH_CHECK(input.is_cuda(), "repsr_ext: `input` must be a CUDA tensor, got ", input.device());
  const at::ScalarType type = input.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16,
              "repsr_ext: on CUDA `input` must be float32, float16 or bfloat16, got ", type);
  const c10::cuda::CUDAGuard guard(input.device());
  NetTensors p = check_and_pack_net(input, weights, biases, neg_slopes, scale, residual, clamp);
  at::Tensor output = at::empty(output_size_nchw(input, p.net), input.options());
  // Float inputs compute in their own dtype: float32 on CUDA cores, float16/bfloat16 on tensor
  // cores with float32 accumulation.
  if (output.numel() > 0)
    run_cuda_chain(p.net, image_ref(input), image_ref(output), kernel_dtype(type), input);
  return output;
}

at::Tensor fused_sr_u8_cuda(const at::Tensor& image, at::TensorList weights, at::TensorList biases,
                            at::TensorList neg_slopes, int64_t scale, bool residual) {
  check_uint8_image(image);
  TORCH_CHECK(image.is_cuda(), "repsr_ext: `image` must be a CUDA tensor, got ", image.device());
  const c10::cuda::CUDAGuard guard(image.device());
  const at::Tensor as_nchw = image.permute({0, 3, 1, 2});
  NetTensors p = check_and_pack_net(as_nchw, weights, biases, neg_slopes, scale, residual,
                                    /*clamp=*/true, "image", "[N, H, W, C]");
  at::Tensor output = at::empty(output_size_nhwc(image, p.net), image.options());
  // uint8 images compute in float16 on tensor cores. The input is exact in float16 (k / 255 is
  // within 2^-12 relative), and an 8-bit output needs the result to about 1/510 absolute; float16
  // activations (11-bit significand) with float32 accumulation stay well inside that for deployed
  // SR nets, so outputs differ from a float64 reference by at most one level, and only for values
  // that lie near a rounding boundary. The tail conv, residual add, clamp and rounding run in
  // float32. This is the throughput path for images; float32 input runs fp32 end to end.
  if (output.numel() > 0)
    run_cuda_chain(p.net, nhwc_image_ref(image), nhwc_image_ref(output), DType::kFloat16, image);
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(repsr_ext, CUDA, m) {
  m.impl("fused_sr", &fused_sr_cuda);
  m.impl("fused_sr_u8", &fused_sr_u8_cuda);
}

}  // namespace repsr
