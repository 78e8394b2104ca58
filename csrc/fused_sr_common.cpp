// Shape checks shared by the CPU and CUDA paths (torch-free).
#include "fused_sr.h"

namespace repsr {

namespace {

bool valid_dtype(DType dtype) { return dtype == DType::kFloat32 || dtype == DType::kUInt8; }

bool has_elements(const ImageRef& image) {
  return image.n > 0 && image.c > 0 && image.h > 0 && image.w > 0;
}

}  // namespace

const char* validate(const Net& net, const ImageRef& in, const ImageRef& out) {
  if (net.layers == nullptr || net.num_layers < 1) return "net has no layers";
  if (net.scale < 1) return "net scale must be >= 1";
  for (int l = 0; l < net.num_layers; ++l) {
    const ConvLayer& layer = net.layers[l];
    if (layer.cin < 1 || layer.cout < 1) return "every layer needs cin >= 1 and cout >= 1";
    if (layer.weight == nullptr || layer.bias == nullptr)
      return "a layer is missing its weight or bias";
    if (l > 0 && layer.cin != net.layers[l - 1].cout)
      return "a layer's cin does not match the previous layer's cout";
  }
  if (!valid_dtype(in.dtype) || !valid_dtype(out.dtype)) return "images must be float32 or uint8";
  if (in.n < 0 || in.c < 0 || in.h < 0 || in.w < 0 || out.n < 0 || out.c < 0 || out.h < 0 ||
      out.w < 0)
    return "image sizes must be non-negative";
  if (in.c != net.layers[0].cin) return "input channels do not match the head layer's cin";
  const int64_t scale = net.scale;
  const ConvLayer& tail = net.layers[net.num_layers - 1];
  if (static_cast<int64_t>(tail.cout) != out.c * scale * scale)
    return "tail cout must equal output channels * scale * scale";
  if (net.residual && in.c != out.c) return "residual needs as many input as output channels";
  if (out.n != in.n) return "input and output batch sizes differ";
  if (out.h != in.h * scale || out.w != in.w * scale)
    return "output size must be the input size times the scale";
  if ((has_elements(in) && in.data == nullptr) || (has_elements(out) && out.data == nullptr))
    return "image data pointer is null";
  return nullptr;
}

}  // namespace repsr
