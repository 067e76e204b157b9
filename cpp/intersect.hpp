// Intersection of per-direction patch verdicts and per-direction difference masks.
#pragma once

#include <cstddef>
#include <cstdint>

namespace patchloupe {

// verdicts, valid: D x n bytes (numpy bool, nonzero = true); out: n bytes (0/1).
// out[i] = AND of verdicts[d][i] over d with valid[d][i]; false when no direction is valid.
void intersect_maps_bool(const std::uint8_t* verdicts, const std::uint8_t* valid, std::uint8_t* out,
                         std::int64_t directions, std::int64_t n);

// verdicts: D x n floats, valid: D x n bytes; out[i] = min over valid d, 0 when none.
// Returns false (out unspecified) when verdicts holds a NaN anywhere.
bool intersect_maps_float(const float* verdicts, const std::uint8_t* valid, float* out, std::int64_t directions,
                          std::int64_t n);

// masks: D x n floats; out[i] = min over d of masks[d][i]. Returns false (out unspecified) on NaN.
bool intersect_masks(const float* masks, float* out, std::int64_t directions, std::int64_t n);

}  // namespace patchloupe
