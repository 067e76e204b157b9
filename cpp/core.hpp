// patchloupe native core: shared limits, checked arithmetic and a tiny thread pool helper.
// Plain C++17, no Python headers. Every public function validates its own sizes and throws
// std::invalid_argument (mapped to ValueError by the bindings) instead of touching memory
// out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace patchloupe {

inline constexpr int kVersionMajor = 0;

// Largest number of elements any single array produced by the native module may have
// (2**30, i.e. 4 GiB of float32). Larger requests are rejected as absurd instead of allocating.
inline constexpr std::int64_t kMaxElements = std::int64_t{1} << 30;

// a * b, throwing std::invalid_argument mentioning `what` when the product (or an operand) is
// negative or exceeds kMaxElements.
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const std::string& what);

// ceil(a / b) for a >= 0, b > 0.
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// True when any of the n floats is NaN.
bool has_nan(const float* data, std::int64_t n);

// Worker threads used by parallel_for: $PATCHLOUPE_NUM_THREADS if set to a positive integer,
// otherwise min(hardware_concurrency, 8). Decided once, at the first call.
int max_threads();

// Number of workers (threads, the caller included) worth using for `count` items when each worker
// should get at least `grain` items: between 1 and max_threads().
std::int64_t worker_count(std::int64_t count, std::int64_t grain);

// Runs fn(worker, begin, end) over small contiguous tasks covering [0, count) exactly once, on up to
// `workers` threads (worker 0 is the calling thread; worker ids are < workers, and one worker runs
// its tasks sequentially in increasing order). Tasks are pulled dynamically, so a thread that gets
// no CPU time does no work. fn must not throw.
void parallel_tasks(std::int64_t count, std::int64_t workers,
                    const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& fn);

// Runs fn(begin, end) over [0, count) with parallel_tasks on worker_count(count, grain) workers.
// fn must not throw.
void parallel_for(std::int64_t count, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

}  // namespace patchloupe
