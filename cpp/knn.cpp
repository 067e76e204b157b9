#include "knn.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core.hpp"

namespace patchloupe {

namespace {
constexpr std::int64_t kGrain = std::int64_t{1} << 21;  // d2 elements per worker, at least
constexpr std::int64_t kMaxK = 4096;
constexpr std::int64_t kSlices = 16;  // a row is cut into 16 slices; "block" b holds element b of each slice

// best[0..k) ascending; inserts v when it is below best[k-1].
inline void insert(float* best, std::int64_t k, float v) {
  std::int64_t i = k - 1;
  while (i > 0 && best[i - 1] > v) {
    best[i] = best[i - 1];
    --i;
  }
  best[i] = v;
}

// Per-worker buffers for one row.
struct RowScratch {
  std::vector<float> row, mins, best, pick;
};

// The mean of sqrt(max(v, 0)) over the k smallest values of s.row (n values, NaN-free, copied there by the caller)
// with the window of position (py, px) left out. Exact: the window is set to +inf, the row padded to 16 m values
// (m = ceil(n / 16)); block b = {row[b], row[m + b], ..., row[15 m + b]} and its minimum come from elementwise,
// vectorisable passes; the k-th smallest block minimum tau bounds the k-th smallest value from above (k blocks
// hold a value <= tau), so only the blocks whose minimum is <= tau can hold one of the k smallest values.
float row_knn(std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t py, std::int64_t px,
              std::int64_t exclude, std::int64_t k, RowScratch& s) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const std::int64_t m = ceil_div(n, kSlices);
  float* row = s.row.data();
  std::fill(row + n, row + kSlices * m, kInf);
  for (std::int64_t y = std::max<std::int64_t>(0, py - exclude); y <= std::min(h - 1, py + exclude); ++y) {
    std::fill(row + y * w + std::max<std::int64_t>(0, px - exclude), row + y * w + std::min(w, px + exclude + 1), kInf);
  }
  float* __restrict mins = s.mins.data();
  std::copy(row, row + m, mins);
  for (std::int64_t t = 1; t < kSlices; ++t) {
    const float* __restrict slice = row + t * m;
    for (std::int64_t b = 0; b < m; ++b) mins[b] = slice[b] < mins[b] ? slice[b] : mins[b];
  }
  float* pick = s.pick.data();  // the k smallest block minima
  std::fill(pick, pick + k, kInf);
  for (std::int64_t b = 0; b < m; ++b) {
    if (mins[b] < pick[k - 1]) insert(pick, k, mins[b]);
  }
  const float tau = pick[k - 1];
  float* best = s.best.data();
  std::fill(best, best + k, kInf);
  for (std::int64_t b = 0; b < m; ++b) {
    if (!(mins[b] <= tau)) continue;
    for (std::int64_t t = 0; t < kSlices; ++t) {
      const float v = row[t * m + b];
      if (v < best[k - 1]) insert(best, k, v);
    }
  }
  double sum = 0.0;
  for (std::int64_t i = 0; i < k; ++i) sum += std::sqrt(static_cast<double>(std::max(best[i], 0.0f)));
  return static_cast<float>(sum / static_cast<double>(k));
}
}  // namespace

void check_knn_sizes(std::int64_t rows, std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t exclude,
                     std::int64_t k, std::int64_t first) {
  if (h < 1 || w < 1) throw std::invalid_argument("grid must be positive, got (" + std::to_string(h) + ", " +
                                                  std::to_string(w) + ")");
  if (checked_mul(h, w, "grid") != n) {
    throw std::invalid_argument("d2 has " + std::to_string(n) + " columns but grid (" + std::to_string(h) + ", " +
                                std::to_string(w) + ") has " + std::to_string(h * w) + " positions");
  }
  if (exclude < 0) throw std::invalid_argument("exclude must be >= 0, got " + std::to_string(exclude));
  if (first < 0 || first > n - rows) {  // (not first + rows > n: that can overflow)
    throw std::invalid_argument("first must place the " + std::to_string(rows) + " rows inside the grid's " +
                                std::to_string(n) + " positions, got " + std::to_string(first));
  }
  // a window wider than the grid covers it all: exclude is capped before any arithmetic (no overflow)
  const std::int64_t side = 2 * std::min(exclude, std::max(h, w)) + 1;
  const std::int64_t window = std::min(n, std::min(side, h) * std::min(side, w));
  if (k < 1 || k > kMaxK || k > n - window) {
    throw std::invalid_argument("k must be between 1 and " + std::to_string(std::min(kMaxK, n - window)) +
                                " (positions outside every window), got " + std::to_string(k));
  }
}

bool knn_mean_distance(const float* d2, std::int64_t batch, std::int64_t rows, std::int64_t h, std::int64_t w,
                       std::int64_t exclude, std::int64_t k, std::int64_t first, float* out) {
  const std::int64_t n = checked_mul(h, w, "grid");
  check_knn_sizes(rows, n, h, w, exclude, k, first);
  exclude = std::min(exclude, std::max(h, w));  // the same window, and py + exclude cannot overflow
  const std::int64_t total = checked_mul(batch, rows, "d2");
  checked_mul(total, n, "d2");
  std::atomic<bool> nan_found{false}, out_of_memory{false};
  parallel_for(total, std::max<std::int64_t>(1, kGrain / n), [&](std::int64_t begin, std::int64_t end) {
    const std::int64_t m = ceil_div(n, kSlices);
    const auto size = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    RowScratch s;
    try {  // the callback must not throw (parallel_for): a failed allocation is reported after it
      s = RowScratch{std::vector<float>(size(kSlices * m)), std::vector<float>(size(m)), std::vector<float>(size(k)),
                     std::vector<float>(size(k))};
    } catch (const std::bad_alloc&) {
      out_of_memory.store(true, std::memory_order_relaxed);
      return;
    }
    for (std::int64_t idx = begin; idx < end; ++idx) {
      const float* __restrict d = d2 + idx * n;
      float* __restrict row = s.row.data();
      int nan = 0;  // an int accumulator (not bool) lets the compiler vectorise the copy and the test
      for (std::int64_t j = 0; j < n; ++j) {
        row[j] = d[j];
        nan |= static_cast<int>(d[j] != d[j]);
      }
      if (nan != 0) {
        nan_found.store(true, std::memory_order_relaxed);
        return;
      }
      const std::int64_t pos = first + idx % rows;
      out[idx] = row_knn(n, h, w, pos / w, pos % w, exclude, k, s);
    }
  });
  if (out_of_memory.load()) throw std::bad_alloc();
  return !nan_found.load();
}

}  // namespace patchloupe
