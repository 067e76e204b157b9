// Nearest positions of the same image: the self-reference scorer's k smallest squared distances per row.
#pragma once

#include <cstdint>

namespace patchloupe {

// d2: C-contiguous (batch, rows, n) squared distances between the positions first..first+rows-1 of an
// h x w grid (n = h * w, reading order) and all n positions of the same grid, one block per image.
// out[b][r] = mean over the k smallest d2[b][r][j] with j outside the (2 exclude + 1)^2 Chebyshev
// window around position first + r of sqrt(max(d2, 0)). k must leave enough positions outside every
// window (k <= n - min(n, (2 exclude + 1)^2)). Returns false (out unspecified) when d2 holds a NaN.
// Throws std::invalid_argument naming `grid`, `exclude`, `k` or `first` on bad sizes, std::bad_alloc when its
// row buffers cannot be allocated.
bool knn_mean_distance(const float* d2, std::int64_t batch, std::int64_t rows, std::int64_t h, std::int64_t w,
                       std::int64_t exclude, std::int64_t k, std::int64_t first, float* out);

// Validates the sizes without touching memory (same exceptions as knn_mean_distance).
void check_knn_sizes(std::int64_t rows, std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t exclude,
                     std::int64_t k, std::int64_t first);

}  // namespace patchloupe
