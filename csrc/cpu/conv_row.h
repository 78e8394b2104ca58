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

// Winograd F(4x4, 3x3) over one row of output blocks (winograd_kernel.inc). Output block b covers
// output pixels [4b, 4b + 4) of 4 consecutive rows and reads the 6x6 input window whose top-left
// pixel is in + 4b * kLanes. Per chunk of blocks: input transform V = B^T d B into scratch, 36
// GEMMs M[p] = V[p] (blocks x cin) * U[p] (cin x cout), output transform Y = A^T M A + bias,
// activation, stored as whole 4x4 blocks (the caller's planes have room; it discards extras).
// Every block runs the same arithmetic wherever it lies in the row or chunk, so an output pixel's
// bits depend only on its 6x6 input window.
struct WinogradArgs {
  const float* in = nullptr;    // block 0 (channels) of the first block's top-left input pixel
  int64_t in_row_stride = 0;    // floats between input rows
  int64_t in_block_stride = 0;  // floats between channel blocks of one input row
  int cin = 0;
  const float* weight = nullptr;     // U, packed [36][cin][cout_padded]
  const float* bias = nullptr;       // [cout_padded]
  const float* neg_slope = nullptr;  // [cout_padded], or nullptr
  int cout_padded = 0;
  float* out = nullptr;           // block 0 of the first block's top-left output pixel
  int64_t out_row_stride = 0;     // floats between output rows
  int64_t out_block_stride = 0;   // floats between channel blocks of one output row
  int blocks = 0;                 // 4x4 output blocks in the row, >= 1
  float* scratch = nullptr;       // winograd_scratch_floats(cin, cout_padded, kLanes) floats
};

using WinogradFn = void (*)(const WinogradArgs&);

// Most blocks per chunk: V and M of one chunk (36 x chunk x (cin + cout) floats) stay within
// ~576 KiB of L2. The kernel rounds it down to a multiple of its GEMM register block.
inline int winograd_chunk(int cin_padded, int cout_padded) {
  const int chunk = 4096 / (cin_padded + cout_padded);
  return chunk < 6 ? 6 : chunk > 48 ? 48 : chunk;
}
inline int64_t winograd_scratch_floats(int cin, int cout_padded, int lanes) {
  const int cin_padded = (cin + lanes - 1) / lanes * lanes;
  return int64_t{36} * winograd_chunk(cin_padded, cout_padded) * (cin_padded + cout_padded);
}

// Each ISA packs cout to a multiple of its vector width (kLanes) and provides conv_row.
namespace portable {
constexpr int kLanes = 4;
void conv_row(const ConvRowArgs& args);
void winograd_row(const WinogradArgs& args);
}  // namespace portable

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define REPSR_HAVE_X86_KERNELS 1
namespace avx2 {
constexpr int kLanes = 8;
void conv_row(const ConvRowArgs& args);
void winograd_row(const WinogradArgs& args);
}  // namespace avx2
namespace avx512 {
constexpr int kLanes = 16;
void conv_row(const ConvRowArgs& args);
void winograd_row(const WinogradArgs& args);
}  // namespace avx512
#endif

}  // namespace cpu
}  // namespace repsr
