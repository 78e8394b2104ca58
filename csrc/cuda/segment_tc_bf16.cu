// bfloat16 instantiation of the tensor-core segment kernel (segment_tc.cuh). One file per element
// type so the two instantiations compile in parallel.
#include "segment_tc.cuh"

namespace repsr {
namespace cuda {

const char* launch_segment_bf16(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                                cudaStream_t stream) {
  static const char* const names[2] = {"segment_tc<bf16, <=32 channels>", "segment_tc<bf16, <=64 channels>"};
  return tc::launch_segment_tc<__nv_bfloat16>(
      p, smem_bytes, smem_limit, stream, names,
      "cannot set the bfloat16 kernel's shared-memory size",
      "the bfloat16 segment kernel failed to launch");
}

}  // namespace cuda
}  // namespace repsr
