# Positive controls of the CUDA emulation: one bug each, planted in a copy of csrc/cuda by
# apply_planted_bug.cmake. BUG_<name>_FILE / _OLD / _NEW: the edit (the old text must occur once);
# _CASE: the test_cuda_emulated case that runs it; _EXPECT: a regular expression its output must
# match (an emulator report, or the comparison against the float64 reference failing).
set(REPSR_PLANTED_BUGS
  dropped_barrier skew_read padded_channels_unwritten border_not_zeroed b_halves_swapped map_too_wide)

# The barrier between two layers of a segment: the next layer reads a plane still being written.
set(BUG_dropped_barrier_FILE segment_tc.cuh)
set(BUG_dropped_barrier_OLD [==[    __syncthreads();  // plane j + 1 complete before anyone reads it; plane j free for reuse]==])
set(BUG_dropped_barrier_NEW [==[    // planted bug: no barrier between the layers]==])
set(BUG_dropped_barrier_CASE "activation/scale: n2 13x11 widths 3-16-16-16-48 x4 prelu res1 clamp0 f16")
set(BUG_dropped_barrier_EXPECT "shared race: read-after-write")

# ldmatrix rows start 8 channels late: the upper half of a 16-channel pixel's rows is its skew.
set(BUG_skew_read_FILE segment_tc.cuh)
set(BUG_skew_read_OLD [==[(py * in_pitch + px * in_stride + tc_a_col(lane)) *]==])
set(BUG_skew_read_NEW [==[(py * in_pitch + px * in_stride + tc_a_col(lane) + 8) *]==])
set(BUG_skew_read_CASE "activation/scale: n2 13x11 widths 3-16-16-16-48 x4 prelu res1 clamp0 f16")
set(BUG_skew_read_EXPECT "uninitialized shared read")

# Only the real output channels are stored: channels 13..15 of a 13-channel plane stay unwritten,
# and the next layer's k16 step reads them.
set(BUG_padded_channels_unwritten_FILE segment_tc.cuh)
set(BUG_padded_channels_unwritten_OLD [==[} else if (co < out_cpad) {]==])
set(BUG_padded_channels_unwritten_NEW [==[} else if (co < layer.cout) {]==])
set(BUG_padded_channels_unwritten_CASE "channels: n1 11x13 widths 3-13-13-12 x2 prelu res1 clamp0 f16")
set(BUG_padded_channels_unwritten_EXPECT "uninitialized shared read")

# The float32 kernel keeps the values computed outside the image instead of the zero padding.
set(BUG_border_not_zeroed_FILE segment_fp32.cu)
set(BUG_border_not_zeroed_OLD [==[padding ? 0.0f : v);]==])
set(BUG_border_not_zeroed_NEW [==[v);]==])
set(BUG_border_not_zeroed_CASE "channels: n1 11x13 widths 3-13-13-12 x2 prelu res1 clamp0 f32")
set(BUG_border_not_zeroed_EXPECT "FAIL: .*relative L2 error")

# The two registers of a B fragment swapped (k rows 0-7 and 8-15 exchanged).
set(BUG_b_halves_swapped_FILE segment_tc.cuh)
set(BUG_b_halves_swapped_OLD [==[mma_16816<T>(acc[mt][2 * q], a[mt], b[q].x, b[q].y);]==])
set(BUG_b_halves_swapped_NEW [==[mma_16816<T>(acc[mt][2 * q], a[mt], b[q].y, b[q].x);]==])
set(BUG_b_halves_swapped_CASE "activation/scale: n2 13x11 widths 3-16-16-16-48 x4 prelu res1 clamp0 bf16")
set(BUG_b_halves_swapped_EXPECT "FAIL: .*against float64")

# A segment writes its boundary map one column wider than its tile: into the next tile's pixels.
set(BUG_map_too_wide_FILE segment_tc.cuh)
set(BUG_map_too_wide_OLD [==[store_plane_to_map<T>(p, tile.n, segment_plane(k, k, th, tw, tile.y0, tile.x0),]==])
set(BUG_map_too_wide_NEW [==[store_plane_to_map<T>(p, tile.n, segment_plane(k, k, th, tw + 1, tile.y0, tile.x0),]==])
set(BUG_map_too_wide_CASE "split by shared memory: n2 14x19 widths 3-64-64-64-64-64-48 x4 prelu res1 clamp0 f16")
set(BUG_map_too_wide_EXPECT "write-write race between blocks")
