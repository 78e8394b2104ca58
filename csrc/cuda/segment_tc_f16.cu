// float16 instantiation of the tensor-core segment kernel (segment_tc.cuh). One file per element
// type so the two instantiations compile in parallel.
#include "segment_tc.cuh"

namespace repsr {
namespace cuda {

const char* launch_segment_f16(const SegmentParams& p, int64_t smem_bytes, int64_t smem_limit,
                               cudaStream_t stream) {
  static const char* const names[2] = {"segment_tc<f16, <=32 channels>", "segment_tc<f16, <=64 channels>"};
  return tc::launch_segment_tc<__half>(
      p, smem_bytes, smem_limit, stream, names,
      "cannot set the float16 kernel's shared-memory size",
      "the float16 segment kernel failed to launch");
}

}  // namespace cuda
}  // namespace repsr
