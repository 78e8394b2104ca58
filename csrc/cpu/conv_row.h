// Private to the CPU kernel: the one primitive every ISA implements, one output row of a 3x3 conv
// over channels-last activations, and the per-ISA entry points fused_sr_cpu.cpp dispatches to.
#pragma once

#include <cstdint>

namespace repsr {
namespace cpu {

// Activation planes are channel-blocked, [row][channel block][x][lane], with kLanes channels per
// block (the ISA's vector width; the last block is zero-padded). Pixels of one block are then
// exactly one vector apart, so the kernel addresses all pixels of a block from one pointer with
// constant displacements, and each pixel's block is one aligned vector load or store.
//
// ConvRowArgs describes one output row segment of a "valid" 3x3 conv (the caller's planes already
// hold the zero padding) plus bias and activation. Output pixel p reads the window whose top-left
// pixel is in + p * kLanes.
struct ConvRowArgs {
  const float* in = nullptr;    // block 0 of the first output pixel's top-left input pixel
  int64_t in_row_stride = 0;    // floats between input rows
  int64_t in_block_stride = 0;  // floats between channel blocks of one input row
  int cin = 0;
  const float* weight = nullptr;     // packed [ky][kx][ci][cout_padded]
  const float* bias = nullptr;       // [cout_padded], zero in the padding
  const float* neg_slope = nullptr;  // [cout_padded], or nullptr for no activation
  int cout_padded = 0;               // multiple of kLanes
  float* out = nullptr;              // block 0 of the first output pixel
  int64_t out_block_stride = 0;      // floats between channel blocks of the output row
  int width = 0;                     // output pixels in the row, >= 1
};

using ConvRowFn = void (*)(const ConvRowArgs&);

// Each ISA packs cout to a multiple of its vector width (kLanes) and provides conv_row.
namespace portable {
constexpr int kLanes = 4;
void conv_row(const ConvRowArgs& args);
}  // namespace portable

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define REPSR_HAVE_X86_KERNELS 1
namespace avx2 {
constexpr int kLanes = 8;
void conv_row(const ConvRowArgs& args);
}  // namespace avx2
namespace avx512 {
constexpr int kLanes = 16;
void conv_row(const ConvRowArgs& args);
}  // namespace avx512
#endif

}  // namespace cpu
}  // namespace repsr
