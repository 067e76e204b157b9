// Neighbour triplets (first, second, target) of patch indices for the four scan directions.
#pragma once

#include <cstdint>
#include <string>

namespace patchloupe {

enum class Direction { kLeftToRight, kRightToLeft, kTopToBottom, kBottomToTop };

// Parses "ltr", "rtl", "ttb", "btt"; throws std::invalid_argument naming `direction` otherwise.
Direction parse_direction(const std::string& name);

// Number of triplets for a rows x cols grid (0 when the scan axis has fewer than 3 patches).
// Throws std::invalid_argument naming `rows` / `cols` for non-positive or absurd sizes.
std::int64_t triplet_count(std::int64_t rows, std::int64_t cols, Direction dir);

// Writes triplet_count(...) * 3 int64 values to out, row-major (T, 3).
void neighbor_triplets(std::int64_t rows, std::int64_t cols, Direction dir, std::int64_t* out);

}  // namespace patchloupe
