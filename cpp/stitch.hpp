// Stitching of low-resolution per-patch masks into one full-resolution map.
#pragma once

#include <cstdint>
#include <vector>

namespace patchloupe {

// Half-pixel-centre linear resampling taps (cv2 INTER_LINEAR / torch align_corners=False with edge
// clamping) from an axis of n_in samples to n_out samples; only the first `keep` outputs are built.
// out[i] = in[i0[i]] * (1 - w[i]) + in[i1[i]] * w[i].
struct LinearTaps {
  std::vector<std::int64_t> i0, i1;
  std::vector<float> w;
};
LinearTaps linear_taps(std::int64_t n_in, std::int64_t n_out, std::int64_t keep);

// patch_masks: C-contiguous (rows*cols, mh, mw) floats. Places them into a (rows*mh, cols*mw)
// canvas in reading order, resizes it bilinearly to (rows*ph, cols*pw) with ph = ceil(H/rows),
// pw = ceil(W/cols), and writes the top-left H x W crop to out (C-contiguous).
// Throws std::invalid_argument naming `grid`, `patch_masks` or `out_hw` on bad sizes.
void stitch(const float* patch_masks, std::int64_t rows, std::int64_t cols, std::int64_t mh, std::int64_t mw,
            std::int64_t height, std::int64_t width, float* out);

// Validates the stitch sizes without touching memory (same exceptions as stitch).
void check_stitch_sizes(std::int64_t rows, std::int64_t cols, std::int64_t mh, std::int64_t mw, std::int64_t height,
                        std::int64_t width);

}  // namespace patchloupe
