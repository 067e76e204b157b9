#include "tiling.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace patchloupe {

namespace {
std::string pair_str(std::int64_t a, std::int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}
// Copies are memory-bound and numpy copies single-threaded: only images far above typical camera
// frames (>= 64 MiB per worker) are worth extra threads, whose start-up and tail latency on a busy
// machine otherwise cost more than they save.
constexpr std::int64_t kCopyGrainBytes = std::int64_t{64} << 20;
}  // namespace

TileGeometry make_tile_geometry(std::int64_t height, std::int64_t width, std::int64_t rows, std::int64_t cols,
                                std::int64_t channel_elems, const std::string& image_name) {
  if (rows <= 0 || cols <= 0) {
    throw std::invalid_argument("grid " + pair_str(rows, cols) + " must have positive entries");
  }
  if (height <= 0 || width <= 0 || channel_elems <= 0) {
    throw std::invalid_argument(image_name + " must be non-empty, got size " + pair_str(height, width));
  }
  if (height > kMaxElements || width > kMaxElements || channel_elems > kMaxElements) {
    throw std::invalid_argument(image_name + " size " + pair_str(height, width) + " is too large");
  }
  if (rows > height || cols > width) {
    throw std::invalid_argument("grid " + pair_str(rows, cols) + " is larger than " + image_name + " " +
                                pair_str(height, width));
  }
  TileGeometry g;
  g.height = height;
  g.width = width;
  g.rows = rows;
  g.cols = cols;
  g.patch_h = ceil_div(height, rows);
  g.patch_w = ceil_div(width, cols);
  // The padded image must stay within the element limit.
  const std::int64_t padded = checked_mul(checked_mul(rows * g.patch_h, cols * g.patch_w, image_name),
                                          channel_elems, image_name);
  (void)padded;
  return g;
}

void tile(const std::uint8_t* src, std::uint8_t* dst, const TileGeometry& g, std::size_t pixel_bytes) {
  const std::int64_t ph = g.patch_h, pw = g.patch_w, H = g.height, W = g.width, cols = g.cols;
  const std::size_t row_bytes = static_cast<std::size_t>(W) * pixel_bytes;
  const std::size_t prow_bytes = static_cast<std::size_t>(pw) * pixel_bytes;
  const std::int64_t lines = g.patches() * ph;  // output rows of pw pixels
  const std::int64_t grain = std::max<std::int64_t>(1, kCopyGrainBytes / static_cast<std::int64_t>(prow_bytes));
  parallel_for(lines, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t line = begin; line < end; ++line) {
      const std::int64_t p = line / ph, yy = line % ph;
      const std::int64_t r = p / cols, c = p % cols;
      const std::uint8_t* srow = src + static_cast<std::size_t>(reflect_index(r * ph + yy, H)) * row_bytes;
      std::uint8_t* drow = dst + static_cast<std::size_t>(line) * prow_bytes;
      const std::int64_t x0 = c * pw;
      const std::int64_t direct = std::clamp<std::int64_t>(W - x0, 0, pw);  // pixels inside the image
      if (direct > 0) {
        std::memcpy(drow, srow + static_cast<std::size_t>(x0) * pixel_bytes,
                    static_cast<std::size_t>(direct) * pixel_bytes);
      }
      for (std::int64_t xx = direct; xx < pw; ++xx) {  // reflected tail (right padding)
        const std::int64_t sx = reflect_index(x0 + xx, W);
        std::memcpy(drow + static_cast<std::size_t>(xx) * pixel_bytes,
                    srow + static_cast<std::size_t>(sx) * pixel_bytes, pixel_bytes);
      }
    }
  });
}

void untile(const std::uint8_t* src, std::uint8_t* dst, const TileGeometry& g, std::size_t pixel_bytes) {
  const std::int64_t ph = g.patch_h, pw = g.patch_w, H = g.height, W = g.width, cols = g.cols;
  const std::size_t row_bytes = static_cast<std::size_t>(W) * pixel_bytes;
  const std::size_t patch_bytes = static_cast<std::size_t>(ph * pw) * pixel_bytes;
  const std::size_t prow_bytes = static_cast<std::size_t>(pw) * pixel_bytes;
  const std::int64_t grain = std::max<std::int64_t>(1, kCopyGrainBytes / static_cast<std::int64_t>(row_bytes));
  parallel_for(H, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t y = begin; y < end; ++y) {
      const std::int64_t r = y / ph, yy = y % ph;
      std::uint8_t* drow = dst + static_cast<std::size_t>(y) * row_bytes;
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::int64_t x0 = c * pw;
        const std::int64_t n = std::clamp<std::int64_t>(W - x0, 0, pw);
        if (n == 0) break;
        const std::uint8_t* s = src + static_cast<std::size_t>(r * cols + c) * patch_bytes +
                                static_cast<std::size_t>(yy) * prow_bytes;
        std::memcpy(drow + static_cast<std::size_t>(x0) * pixel_bytes, s, static_cast<std::size_t>(n) * pixel_bytes);
      }
    }
  });
}

}  // namespace patchloupe
