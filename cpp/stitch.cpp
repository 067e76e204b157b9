#include "stitch.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core.hpp"

namespace patchloupe {

namespace {
std::string pair_str(std::int64_t a, std::int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}
constexpr std::int64_t kRowGrainElems = std::int64_t{1} << 20;  // output elements per worker, at least
}  // namespace

LinearTaps linear_taps(std::int64_t n_in, std::int64_t n_out, std::int64_t keep) {
  LinearTaps t;
  t.i0.resize(static_cast<std::size_t>(keep));
  t.i1.resize(static_cast<std::size_t>(keep));
  t.w.resize(static_cast<std::size_t>(keep));
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  for (std::int64_t i = 0; i < keep; ++i) {
    double src = (static_cast<double>(i) + 0.5) * scale - 0.5;
    src = std::max(src, 0.0);
    const std::int64_t lo = std::min(static_cast<std::int64_t>(std::floor(src)), n_in - 1);
    t.i0[i] = lo;
    t.i1[i] = std::min(lo + 1, n_in - 1);
    t.w[i] = static_cast<float>(src - static_cast<double>(lo));
  }
  return t;
}

void check_stitch_sizes(std::int64_t rows, std::int64_t cols, std::int64_t mh, std::int64_t mw, std::int64_t height,
                        std::int64_t width) {
  if (rows <= 0 || cols <= 0) {
    throw std::invalid_argument("grid " + pair_str(rows, cols) + " must have positive entries");
  }
  if (mh <= 0 || mw <= 0) {
    throw std::invalid_argument("patch_masks must be non-empty, got mask size " + pair_str(mh, mw));
  }
  if (height <= 0 || width <= 0) {
    throw std::invalid_argument("out_hw " + pair_str(height, width) + " must be positive");
  }
  if (height > kMaxElements || width > kMaxElements) {
    throw std::invalid_argument("out_hw " + pair_str(height, width) + " is too large");
  }
  checked_mul(height, width, "out_hw " + pair_str(height, width));
  checked_mul(checked_mul(checked_mul(rows, cols, "grid"), mh, "patch_masks"), mw, "patch_masks");
  if (rows > height || cols > width) {
    throw std::invalid_argument("grid " + pair_str(rows, cols) + " is larger than out_hw " + pair_str(height, width));
  }
}

void stitch(const float* patch_masks, std::int64_t rows, std::int64_t cols, std::int64_t mh, std::int64_t mw,
            std::int64_t height, std::int64_t width, float* out) {
  check_stitch_sizes(rows, cols, mh, mw, height, width);
  const std::int64_t ph = ceil_div(height, rows), pw = ceil_div(width, cols);
  const LinearTaps ty = linear_taps(rows * mh, rows * ph, height);
  const LinearTaps tx = linear_taps(cols * mw, cols * pw, width);

  // Canvas column X lives in patch X / mw at column X % mw; canvas row Y in patch row Y / mh at Y % mh.
  const std::int64_t patch_elems = mh * mw;
  // Offsets stay below cols * mh * mw <= kMaxElements (checked), so int32 suffices and keeps the
  // tap tables small enough for L1.
  std::vector<std::int32_t> xoff0(static_cast<std::size_t>(width)), xoff1(static_cast<std::size_t>(width));
  for (std::int64_t x = 0; x < width; ++x) {
    xoff0[x] = static_cast<std::int32_t>((tx.i0[x] / mw) * patch_elems + tx.i0[x] % mw);
    xoff1[x] = static_cast<std::int32_t>((tx.i1[x] / mw) * patch_elems + tx.i1[x] % mw);
  }
  const std::int64_t patch_row_elems = cols * patch_elems;
  auto canvas_row = [&](std::int64_t Y) { return patch_masks + (Y / mh) * patch_row_elems + (Y % mh) * mw; };

  const std::int64_t workers = worker_count(height, std::max<std::int64_t>(1, kRowGrainElems / width));
  // Two horizontally resampled canvas rows per worker (at most 2x the output size in total).
  std::vector<float> scratch(static_cast<std::size_t>(2 * workers) * static_cast<std::size_t>(width));
  const float* wx = tx.w.data();
  const std::int32_t* o0 = xoff0.data();
  const std::int32_t* o1 = xoff1.data();

  parallel_tasks(height, workers, [&](std::int64_t worker, std::int64_t begin, std::int64_t end) {
    // Consecutive output rows mostly reuse the same pair of canvas rows: keep the last two.
    float* buf[2] = {scratch.data() + worker * 2 * width, scratch.data() + (worker * 2 + 1) * width};
    std::int64_t held[2] = {-1, -1};
    // Returns the slot holding resampled canvas row Y, never evicting slot `keep`.
    auto fetch = [&](std::int64_t Y, int keep) -> int {
      if (held[0] == Y) return 0;
      if (held[1] == Y) return 1;
      const int k = keep == 0 ? 1 : keep == 1 ? 0 : (held[0] <= held[1] ? 0 : 1);
      const float* src = canvas_row(Y);
      float* dst = buf[k];
      for (std::int64_t x = 0; x < width; ++x) {
        dst[x] = src[o0[x]] * (1.0f - wx[x]) + src[o1[x]] * wx[x];
      }
      held[k] = Y;
      return k;
    };
    for (std::int64_t y = begin; y < end; ++y) {
      const int ka = fetch(ty.i0[y], -1);
      const int kb = fetch(ty.i1[y], ka);
      const float* a = buf[ka];
      const float* b = buf[kb];
      const float w1 = ty.w[y], w0 = 1.0f - w1;
      float* dst = out + y * width;
      for (std::int64_t x = 0; x < width; ++x) dst[x] = a[x] * w0 + b[x] * w1;
    }
  });
}

}  // namespace patchloupe
