#include "intersect.hpp"

#include <algorithm>
#include <atomic>
#include <limits>

#include "core.hpp"

namespace patchloupe {

namespace {
constexpr std::int64_t kGrain = std::int64_t{1} << 24;  // elements per worker, at least (memory-bound)
constexpr std::int64_t kBlock = 1024;                   // elements per cache block
}

void intersect_maps_bool(const std::uint8_t* verdicts, const std::uint8_t* valid, std::uint8_t* out,
                         std::int64_t directions, std::int64_t n) {
  parallel_for(n, kGrain, [&](std::int64_t begin, std::int64_t end) {
    std::uint8_t any[kBlock];
    for (std::int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const std::int64_t len = std::min(kBlock, end - b0);
      std::uint8_t* all = out + b0;
      for (std::int64_t j = 0; j < len; ++j) {
        all[j] = 1;
        any[j] = 0;
      }
      for (std::int64_t d = 0; d < directions; ++d) {
        const std::uint8_t* vd = verdicts + d * n + b0;
        const std::uint8_t* ok = valid + d * n + b0;
        for (std::int64_t j = 0; j < len; ++j) {
          const std::uint8_t v = ok[j] != 0;
          any[j] |= v;
          all[j] &= static_cast<std::uint8_t>(!v | (vd[j] != 0));
        }
      }
      for (std::int64_t j = 0; j < len; ++j) all[j] &= any[j];
    }
  });
}

bool intersect_maps_float(const float* verdicts, const std::uint8_t* valid, float* out, std::int64_t directions,
                          std::int64_t n) {
  std::atomic<bool> nan_found{false};
  parallel_for(n, kGrain, [&](std::int64_t begin, std::int64_t end) {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    std::uint8_t any[kBlock];
    int nan = 0;
    for (std::int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const std::int64_t len = std::min(kBlock, end - b0);
      float* best = out + b0;
      for (std::int64_t j = 0; j < len; ++j) {
        best[j] = kInf;
        any[j] = 0;
      }
      for (std::int64_t d = 0; d < directions; ++d) {
        const float* vd = verdicts + d * n + b0;
        const std::uint8_t* ok = valid + d * n + b0;
        for (std::int64_t j = 0; j < len; ++j) any[j] |= ok[j];
        for (std::int64_t j = 0; j < len; ++j) {
          const float x = vd[j];
          nan |= static_cast<int>(x != x);
          const float cand = ok[j] != 0 ? x : kInf;
          best[j] = cand < best[j] ? cand : best[j];
        }
      }
      for (std::int64_t j = 0; j < len; ++j) best[j] = any[j] != 0 ? best[j] : 0.0f;
    }
    if (nan != 0) nan_found.store(true, std::memory_order_relaxed);
  });
  return !nan_found.load();
}

bool intersect_masks(const float* masks, float* out, std::int64_t directions, std::int64_t n) {
  std::atomic<bool> nan_found{false};
  parallel_for(n, kGrain, [&](std::int64_t begin, std::int64_t end) {
    int nan = 0;
    const float* first = masks;
    for (std::int64_t i = begin; i < end; ++i) {
      const float x = first[i];
      nan |= static_cast<int>(x != x);
      out[i] = x;
    }
    for (std::int64_t d = 1; d < directions; ++d) {
      const float* m = masks + d * n;
      for (std::int64_t i = begin; i < end; ++i) {
        const float x = m[i];
        nan |= static_cast<int>(x != x);
        out[i] = x < out[i] ? x : out[i];
      }
    }
    if (nan != 0) nan_found.store(true, std::memory_order_relaxed);
  });
  return !nan_found.load();
}

}  // namespace patchloupe
