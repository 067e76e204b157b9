// Tiling of an image into a (rows, cols) grid of equally sized patches and back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core.hpp"

namespace patchloupe {

// Geometry of a (rows, cols) grid over an H x W image: patch size ph x pw with ph = ceil(H/rows),
// pw = ceil(W/cols); the padded image is (rows*ph) x (cols*pw).
struct TileGeometry {
  std::int64_t height = 0, width = 0, rows = 0, cols = 0, patch_h = 0, patch_w = 0;
  std::int64_t patches() const { return rows * cols; }
};

// Validates and builds the geometry; throws std::invalid_argument naming `grid` or `image_name`
// when a size is non-positive, the grid is larger than the image, or sizes are absurd.
// `channel_elems` (>= 1) is the number of elements per pixel, used for the size limit.
TileGeometry make_tile_geometry(std::int64_t height, std::int64_t width, std::int64_t rows, std::int64_t cols,
                                std::int64_t channel_elems, const std::string& image_name);

// numpy np.pad(mode="reflect") source index of padded coordinate i for an axis of length n
// (valid for i < 2n - 1).
inline std::int64_t reflect_index(std::int64_t i, std::int64_t n) { return i < n ? i : 2 * (n - 1) - i; }

// src: C-contiguous H x W pixels of pixel_bytes bytes each.
// dst: C-contiguous (rows*cols) x ph x pw pixels, patch p = r*cols + c, reflection padded.
void tile(const std::uint8_t* src, std::uint8_t* dst, const TileGeometry& g, std::size_t pixel_bytes);

// Inverse of tile: src (rows*cols) x ph x pw pixels -> dst H x W pixels (padding cropped).
void untile(const std::uint8_t* src, std::uint8_t* dst, const TileGeometry& g, std::size_t pixel_bytes);

}  // namespace patchloupe
