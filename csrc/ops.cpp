// The op schema (TORCH_LIBRARY) and its CPU registration. The CUDA registration lives in
// ops_cuda.cpp, which only CUDA builds compile. Fake (meta) kernels are in repsr_ext/ops.py.
#include <Python.h>

#include <ATen/Parallel.h>

#include "binding.h"

// Importing repsr_ext._C runs the static TORCH_LIBRARY registrations below; the module itself is
// empty (the ops are reached through torch.ops.repsr_ext). PyMODINIT_FUNC exports the symbol even
// under -fvisibility=hidden.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace repsr {
namespace {

void run_cpu_chain(const Net& net, const ImageRef& in, const ImageRef& out) {
  const char* problem = validate(net, in, out);
  TORCH_CHECK(problem == nullptr, "repsr_ext: ", problem ? problem : "");
  CpuChain chain(net, in, out);
  at::parallel_for(0, chain.num_work_items(), 1,
                   [&](int64_t begin, int64_t end) { chain.run(begin, end); });
}

at::Tensor fused_sr_cpu(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                        at::TensorList neg_slopes, int64_t scale, bool residual, bool clamp) {
  check_float_input(input);
  TORCH_CHECK(input.scalar_type() == at::kFloat,
              "repsr_ext: on the CPU `input` must be float32, got ", input.scalar_type());
  NetTensors p = check_and_pack_net(input, weights, biases, neg_slopes, scale, residual, clamp);
  at::Tensor output = at::empty(output_size_nchw(input, p.net), input.options());
  if (output.numel() > 0) run_cpu_chain(p.net, image_ref(input), image_ref(output));
  return output;
}

at::Tensor fused_sr_u8_cpu(const at::Tensor& image, at::TensorList weights, at::TensorList biases,
                           at::TensorList neg_slopes, int64_t scale, bool residual) {
  check_uint8_image(image);
  const at::Tensor as_nchw = image.permute({0, 3, 1, 2});
  NetTensors p = check_and_pack_net(as_nchw, weights, biases, neg_slopes, scale, residual,
                                    /*clamp=*/true, "image", "[N, H, W, C]");
  at::Tensor output = at::empty(output_size_nhwc(image, p.net), image.options());
  if (output.numel() > 0) run_cpu_chain(p.net, nhwc_image_ref(image), nhwc_image_ref(output));
  return output;
}

std::string cpu_isa() {
  // The ISA the CPU chain dispatches to on this machine (independent of the network).
  return CpuChain::detected_isa();
}

}  // namespace

TORCH_LIBRARY(repsr_ext, m) {
  m.def(
      "fused_sr(Tensor input, Tensor[] weights, Tensor[] biases, Tensor[] neg_slopes, "
      "int scale, bool residual, bool clamp) -> Tensor");
  m.def(
      "fused_sr_u8(Tensor image, Tensor[] weights, Tensor[] biases, Tensor[] neg_slopes, "
      "int scale, bool residual) -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(repsr_ext, CPU, m) {
  m.impl("fused_sr", &fused_sr_cpu);
  m.impl("fused_sr_u8", &fused_sr_u8_cpu);
}

}  // namespace repsr
