// The thin layer between torch tensors and the torch-free kernels (fused_sr.h): argument checks
// whose messages name the tensor and what was expected, and tensor -> ImageRef / Net conversion.
// Included by ops.cpp (CPU) and ops_cuda.cpp (CUDA) only.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "fused_sr.h"

namespace repsr {

inline DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::kFloat32;
    case at::kByte: return DType::kUInt8;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "repsr_ext: unsupported dtype ", type);
  }
}

inline ImageRef image_ref(const at::Tensor& t) {
  ImageRef r;
  r.data = t.data_ptr();
  r.dtype = kernel_dtype(t.scalar_type());
  r.n = t.size(0);
  r.c = t.size(1);
  r.h = t.size(2);
  r.w = t.size(3);
  r.stride_n = t.stride(0);
  r.stride_c = t.stride(1);
  r.stride_h = t.stride(2);
  r.stride_w = t.stride(3);
  return r;
}

// A HWC-ordered uint8 batch [N, H, W, C] seen as the (n, c, y, x) image the kernels index.
inline ImageRef nhwc_image_ref(const at::Tensor& t) {
  return image_ref(t.permute({0, 3, 1, 2}));
}

// The network's tensors, made contiguous float32 on the input's device (the CUDA launch converts
// them to its compute type itself), kept alive while the
// kernels read the raw pointers in `layers`.
struct NetTensors {
  std::vector<at::Tensor> weights, biases, slopes;
  std::vector<ConvLayer> layers;
  Net net;
};

// `input` is seen as [N, C, H, W]; `input_name` and `layout` name the caller's tensor as the
// user passed it (the uint8 op takes NHWC images).
inline NetTensors check_and_pack_net(const at::Tensor& input, at::TensorList weights,
                                     at::TensorList biases, at::TensorList neg_slopes,
                                     int64_t scale, bool residual, bool clamp,
                                     const char* input_name = "input",
                                     const char* layout = "[N, C, H, W]") {
  const size_t num_layers = weights.size();
  TORCH_CHECK(num_layers >= 1, "repsr_ext: `weights` must hold at least one conv layer");
  TORCH_CHECK(biases.size() == num_layers, "repsr_ext: `biases` must have one tensor per layer (",
              num_layers, "), got ", biases.size());
  TORCH_CHECK(neg_slopes.size() == num_layers - 1,
              "repsr_ext: `neg_slopes` must have one tensor per activation (", num_layers - 1,
              " = layers - 1, the tail has none), got ", neg_slopes.size());
  TORCH_CHECK(scale >= 1, "repsr_ext: `scale` must be >= 1, got ", scale);

  NetTensors p;
  int64_t cin = input.size(1);
  // The input's channel count against the head's first, so that the message blames the input.
  TORCH_CHECK(weights[0].dim() != 4 || weights[0].size(1) == cin, "repsr_ext: `", input_name,
              "` has ", cin, " channels but weights[0] takes ", weights[0].size(1), ": `",
              input_name, "` must be ", layout, " with C = ", weights[0].size(1));
  for (size_t i = 0; i < num_layers; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 4 && w.size(1) == cin && w.size(2) == 3 && w.size(3) == 3,
                "repsr_ext: weights[", i, "] must have shape [Cout, ", cin, ", 3, 3], got ",
                w.sizes());
    TORCH_CHECK(w.device() == input.device(), "repsr_ext: weights[", i, "] is on ", w.device(),
                " but the input is on ", input.device());
    const int64_t cout = w.size(0);
    TORCH_CHECK(biases[i].dim() == 1 && biases[i].size(0) == cout, "repsr_ext: biases[", i,
                "] must have shape [", cout, "], got ", biases[i].sizes());
    TORCH_CHECK(biases[i].device() == input.device(), "repsr_ext: biases[", i, "] is on ",
                biases[i].device(), " but the input is on ", input.device());
    p.weights.push_back(w.to(at::kFloat).contiguous());
    p.biases.push_back(biases[i].to(at::kFloat).contiguous());
    if (i + 1 < num_layers) {
      const at::Tensor& s = neg_slopes[i];
      TORCH_CHECK(s.dim() == 1 && s.size(0) == cout, "repsr_ext: neg_slopes[", i,
                  "] must have shape [", cout, "], got ", s.sizes());
      TORCH_CHECK(s.device() == input.device(), "repsr_ext: neg_slopes[", i, "] is on ",
                  s.device(), " but the input is on ", input.device());
      p.slopes.push_back(s.to(at::kFloat).contiguous());
    }
    cin = cout;
  }
  TORCH_CHECK(cin % (scale * scale) == 0, "repsr_ext: the tail conv has ", cin,
              " channels, not a multiple of scale^2 = ", scale * scale);
  if (residual) {
    TORCH_CHECK(cin / (scale * scale) == input.size(1), "repsr_ext: residual=True needs ",
                input.size(1), " output channels (as many as the input has), the tail gives ",
                cin / (scale * scale));
  }
  for (size_t i = 0; i < num_layers; ++i) {
    ConvLayer layer;
    layer.cin = static_cast<int32_t>(p.weights[i].size(1));
    layer.cout = static_cast<int32_t>(p.weights[i].size(0));
    layer.weight = p.weights[i].data_ptr<float>();
    layer.bias = p.biases[i].data_ptr<float>();
    layer.neg_slope = i + 1 < num_layers ? p.slopes[i].data_ptr<float>() : nullptr;
    p.layers.push_back(layer);
  }
  p.net.layers = p.layers.data();
  p.net.num_layers = static_cast<int32_t>(num_layers);
  p.net.scale = static_cast<int32_t>(scale);
  p.net.residual = residual;
  p.net.clamp = clamp;
  return p;
}

inline void check_float_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "repsr_ext: `input` must be 4-D [N, C, H, W], got ",
              input.dim(), "-D with shape ", input.sizes());
}

inline void check_uint8_image(const at::Tensor& image) {
  TORCH_CHECK(image.dim() == 4, "repsr_ext: `image` must be 4-D uint8 [N, H, W, C], got ",
              image.dim(), "-D with shape ", image.sizes());
  TORCH_CHECK(image.scalar_type() == at::kByte, "repsr_ext: `image` must be uint8, got ",
              image.scalar_type());
}

inline std::vector<int64_t> output_size_nchw(const at::Tensor& input, const Net& net) {
  const int64_t cout = net.layers[net.num_layers - 1].cout / (net.scale * net.scale);
  return {input.size(0), cout, input.size(2) * net.scale, input.size(3) * net.scale};
}

inline std::vector<int64_t> output_size_nhwc(const at::Tensor& image, const Net& net) {
  const int64_t cout = net.layers[net.num_layers - 1].cout / (net.scale * net.scale);
  return {image.size(0), image.size(1) * net.scale, image.size(2) * net.scale, cout};
}

}  // namespace repsr
