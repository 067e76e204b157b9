#include "core.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

namespace patchloupe {

std::int64_t checked_mul(std::int64_t a, std::int64_t b, const std::string& what) {
  if (a < 0 || b < 0) throw std::invalid_argument(what + ": negative size");
  if (a != 0 && b > kMaxElements / a) {
    throw std::invalid_argument(what + ": size too large (more than 2**30 elements)");
  }
  return a * b;
}

bool has_nan(const float* data, std::int64_t n) {
  std::atomic<bool> found{false};
  parallel_for(n, std::int64_t{1} << 24, [&](std::int64_t begin, std::int64_t end) {
    int nan = 0;  // an int accumulator (not bool) lets the compiler vectorise the scan
    for (std::int64_t i = begin; i < end; ++i) nan |= static_cast<int>(data[i] != data[i]);
    if (nan != 0) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

namespace {
int detect_max_threads() {
  if (const char* env = std::getenv("PATCHLOUPE_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return static_cast<int>(std::min<long>(v, 64));
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp<unsigned>(hw, 1U, 8U));
}
}  // namespace

int max_threads() {
  static const int threads = detect_max_threads();  // read once: hardware_concurrency() is a syscall
  return threads;
}

std::int64_t worker_count(std::int64_t count, std::int64_t grain) {
  if (count <= 0) return 1;
  grain = std::max<std::int64_t>(grain, 1);
  return std::clamp<std::int64_t>((count + grain - 1) / grain, 1, max_threads());
}

void parallel_tasks(std::int64_t count, std::int64_t workers,
                    const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& fn) {
  if (count <= 0) return;
  workers = std::clamp<std::int64_t>(workers, 1, count);
  if (workers == 1) {
    fn(0, 0, count);
    return;
  }
  // Small tasks pulled from a shared counter: a worker that gets no CPU time (busy machine) takes
  // no work, and the calling thread finishes whatever is left.
  const std::int64_t task = std::max<std::int64_t>(1, (count + workers * 8 - 1) / (workers * 8));
  std::atomic<std::int64_t> next{0};
  const auto run = [&](std::int64_t worker) {
    for (;;) {
      const std::int64_t begin = next.fetch_add(task, std::memory_order_relaxed);
      if (begin >= count) return;
      fn(worker, begin, std::min(count, begin + task));
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  for (std::int64_t w = 1; w < workers; ++w) {
    try {
      threads.emplace_back(run, w);
    } catch (...) {  // could not start a thread: the others (and the caller) take its share
      break;
    }
  }
  run(0);
  for (auto& t : threads) t.join();
}

void parallel_for(std::int64_t count, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
  parallel_tasks(count, worker_count(count, grain),
                 [&fn](std::int64_t, std::int64_t begin, std::int64_t end) { fn(begin, end); });
}

}  // namespace patchloupe
