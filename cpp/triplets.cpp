#include "triplets.hpp"

#include <stdexcept>

#include "core.hpp"

namespace patchloupe {

Direction parse_direction(const std::string& name) {
  if (name == "ltr") return Direction::kLeftToRight;
  if (name == "rtl") return Direction::kRightToLeft;
  if (name == "ttb") return Direction::kTopToBottom;
  if (name == "btt") return Direction::kBottomToTop;
  throw std::invalid_argument("direction must be one of 'ltr', 'rtl', 'ttb', 'btt', got '" + name + "'");
}

std::int64_t triplet_count(std::int64_t rows, std::int64_t cols, Direction dir) {
  if (rows <= 0) throw std::invalid_argument("rows must be positive, got " + std::to_string(rows));
  if (cols <= 0) throw std::invalid_argument("cols must be positive, got " + std::to_string(cols));
  checked_mul(checked_mul(rows, cols, "rows * cols"), 3, "rows * cols");
  const bool horizontal = dir == Direction::kLeftToRight || dir == Direction::kRightToLeft;
  const std::int64_t along = horizontal ? cols : rows;
  const std::int64_t across = horizontal ? rows : cols;
  return along < 3 ? 0 : across * (along - 2);
}

void neighbor_triplets(std::int64_t rows, std::int64_t cols, Direction dir, std::int64_t* out) {
  const bool horizontal = dir == Direction::kLeftToRight || dir == Direction::kRightToLeft;
  const bool reversed = dir == Direction::kRightToLeft || dir == Direction::kBottomToTop;
  const std::int64_t along = horizontal ? cols : rows;
  const std::int64_t across = horizontal ? rows : cols;
  if (along < 3) return;
  // Patch index of position i along the scan line `line`.
  const std::int64_t line_stride = horizontal ? cols : 1;  // between scan lines
  const std::int64_t step = horizontal ? 1 : cols;         // along a scan line
  for (std::int64_t line = 0; line < across; ++line) {
    const std::int64_t base = line * line_stride;
    for (std::int64_t i = 0; i + 2 < along; ++i) {
      const std::int64_t a = base + i * step, b = a + step, t = b + step;
      out[0] = reversed ? t : a;
      out[1] = b;
      out[2] = reversed ? a : t;
      out += 3;
    }
  }
}

}  // namespace patchloupe
