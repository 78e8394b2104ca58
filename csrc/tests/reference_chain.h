// The C++ tests' independent reference for the fused chains: random deployed networks and a
// float64 forward pass (per-layer full-image 3x3 conv with zero padding, activation, pixel shuffle,
// residual, clamp), optionally rounding to a narrower type where a tensor-core chain does (weights,
// the first layer's input, every intermediate activation, the output), like PyTorch's own float16 /
// bfloat16 conv chain. Written layer by layer over whole images: nothing of the kernels' tiling.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "fused_sr.h"

namespace repsr_test {

enum class Activation { kNone, kRelu, kLeaky, kPrelu };
inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kNone: return "none";
    case Activation::kRelu: return "relu";
    case Activation::kLeaky: return "leaky";
    default: return "prelu";
  }
}

struct TestNet {
  std::vector<std::vector<float>> weight, bias, neg_slope;
  std::vector<repsr::ConvLayer> layers;
  repsr::Net net;
};

// A chain through the given channel counts (widths[0] = image channels, widths.back() = tail cout
// = out_channels * scale^2). Weights ~ U(-1, 1) * sqrt(3 / (9 cin)) keep the activations O(1)
// through deep nets. The tail has no activation, as in deployed nets.
inline TestNet make_net_widths(std::mt19937& rng, const std::vector<int>& widths, int scale,
                               Activation act, bool residual, bool clamp) {
  TestNet t;
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  const float leaky_slope = 0.2f * (unit(rng) + 1.0f);
  const int num_layers = static_cast<int>(widths.size()) - 1;
  for (int l = 0; l < num_layers; ++l) {
    const int cin = widths[l], cout = widths[l + 1];
    const float w_scale = std::sqrt(3.0f / (9.0f * cin));
    std::vector<float> w(static_cast<size_t>(cout) * cin * 9), b(cout), s;
    for (float& v : w) v = unit(rng) * w_scale;
    for (float& v : b) v = 0.1f * unit(rng);
    if (l < num_layers - 1 && act != Activation::kNone) {
      s.resize(cout);
      for (float& v : s)
        v = act == Activation::kRelu    ? 0.0f
            : act == Activation::kLeaky ? leaky_slope
                                        : 0.45f * unit(rng) + 0.15f;
    }
    t.weight.push_back(std::move(w));
    t.bias.push_back(std::move(b));
    t.neg_slope.push_back(std::move(s));
  }
  for (int l = 0; l < num_layers; ++l) {
    repsr::ConvLayer layer;
    layer.cin = widths[l];
    layer.cout = widths[l + 1];
    layer.weight = t.weight[l].data();
    layer.bias = t.bias[l].data();
    layer.neg_slope = t.neg_slope[l].empty() ? nullptr : t.neg_slope[l].data();
    t.layers.push_back(layer);
  }
  t.net.layers = t.layers.data();
  t.net.num_layers = num_layers;
  t.net.scale = scale;
  t.net.residual = residual;
  t.net.clamp = clamp;
  return t;
}

// Head in_channels -> width, body width -> width, tail width -> out_channels * scale^2 (a single
// layer maps in_channels straight to the tail).
inline TestNet make_net(std::mt19937& rng, int in_channels, int out_channels, int width,
                        int num_layers, int scale, Activation act, bool residual, bool clamp) {
  std::vector<int> widths = {in_channels};
  for (int l = 0; l + 1 < num_layers; ++l) widths.push_back(width);
  widths.push_back(out_channels * scale * scale);
  return make_net_widths(rng, widths, scale, act, residual, clamp);
}

// Dense N x C x H x W doubles.
struct Tensor {
  int64_t n = 0, c = 0, h = 0, w = 0;
  std::vector<double> v;
  double& at(int64_t i, int64_t ch, int64_t y, int64_t x) {
    return v[((i * c + ch) * h + y) * w + x];
  }
  double at(int64_t i, int64_t ch, int64_t y, int64_t x) const {
    return v[((i * c + ch) * h + y) * w + x];
  }
};

inline Tensor make_tensor(int64_t n, int64_t c, int64_t h, int64_t w) {
  Tensor t{n, c, h, w, {}};
  t.v.assign(static_cast<size_t>(n * c * h * w), 0.0);
  return t;
}

// Rounds a value to a narrower type (nullptr: keep float64).
using Rounding = double (*)(double);
inline double keep(double v) { return v; }

inline Tensor reference_conv(const Tensor& x, const repsr::ConvLayer& layer, Rounding round) {
  Tensor y = make_tensor(x.n, layer.cout, x.h, x.w);
  std::vector<double> w(static_cast<size_t>(layer.cout) * layer.cin * 9);
  for (size_t i = 0; i < w.size(); ++i) w[i] = round(layer.weight[i]);
  for (int64_t i = 0; i < x.n; ++i)
    for (int co = 0; co < layer.cout; ++co)
      for (int64_t r = 0; r < x.h; ++r)
        for (int64_t q = 0; q < x.w; ++q) {
          double sum = layer.bias[co];
          for (int ci = 0; ci < layer.cin; ++ci)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int64_t yy = r + ky - 1, xx = q + kx - 1;
                if (yy < 0 || yy >= x.h || xx < 0 || xx >= x.w) continue;  // zero padding
                sum += w[((static_cast<size_t>(co) * layer.cin + ci) * 3 + ky) * 3 + kx] *
                       x.at(i, ci, yy, xx);
              }
          if (layer.neg_slope != nullptr && sum < 0) sum *= layer.neg_slope[co];
          y.at(i, co, r, q) = sum;
        }
  return y;
}

// `input` holds the values the chain reads (the residual adds them as they are); with `round`, the
// first conv sees them rounded, and every layer's weights and output except the tail's are rounded
// too, as is the final output.
inline Tensor reference_forward(const repsr::Net& net, const Tensor& input, Rounding round = nullptr) {
  const Rounding r8 = round ? round : keep;
  Tensor act = input;
  for (double& v : act.v) v = r8(v);
  for (int l = 0; l < net.num_layers; ++l) {
    act = reference_conv(act, net.layers[l], r8);
    if (l + 1 < net.num_layers)
      for (double& v : act.v) v = r8(v);
  }
  const int64_t r = net.scale;
  const int64_t channels = act.c / (r * r);
  Tensor out = make_tensor(input.n, channels, input.h * r, input.w * r);
  for (int64_t i = 0; i < out.n; ++i)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t y = 0; y < out.h; ++y)
        for (int64_t x = 0; x < out.w; ++x) {
          double v = act.at(i, c * r * r + (y % r) * r + x % r, y / r, x / r);
          if (net.residual) v += input.at(i, c, y / r, x / r);
          if (net.clamp) v = std::min(std::max(v, 0.0), 1.0);
          out.at(i, c, y, x) = r8(v);
        }
  return out;
}

}  // namespace repsr_test
