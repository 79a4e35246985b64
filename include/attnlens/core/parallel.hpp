// parallel_for: runs body(i) for i in [0, n) on OpenMP threads when attnlens::openmp is
// linked, serially otherwise. Exceptions thrown by the body are rethrown on the caller.
#pragma once

#include <exception>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "attnlens/core/types.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace attnlens {

struct ParallelOptions {
  int threads = 0;  // 0: OpenMP's default (OMP_NUM_THREADS or the core count)
};

// The number of threads parallel_for uses with these options: 1 without OpenMP.
inline int thread_count(const ParallelOptions& options = {}) {
#ifdef _OPENMP
  return options.threads > 0 ? options.threads : omp_get_max_threads();
#else
  (void)options;
  return 1;
#endif
}

// The index of the calling thread inside parallel_for's team, in [0, thread_count(options)):
// per-thread workspaces are indexed by it.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// One object per thread of parallel_for, each made by its own thread on first use (so only the
// threads that need one make it, in parallel, and it is first touched in that thread's cache).
template <class W>
class PerThread {
 public:
  explicit PerThread(const ParallelOptions& options)
      : slots_(static_cast<std::size_t>(thread_count(options))) {}

  // The calling thread's object, constructed from args if it has none yet.
  template <class... Args>
  W& get(Args&&... args) {
    std::optional<W>& slot = slots_[static_cast<std::size_t>(thread_index())];
    if (!slot) slot.emplace(std::forward<Args>(args)...);
    return *slot;
  }

  // f(object) for every object some thread made, in thread order (to reduce per-thread sums).
  template <class F>
  void for_each(F&& f) {
    for (std::optional<W>& slot : slots_)
      if (slot) f(*slot);
  }

 private:
  std::vector<std::optional<W>> slots_;
};

// How parallel_for hands out the indices: one at a time to whichever thread is free (even
// load when items cost different amounts), or in contiguous blocks, block t to thread t (for
// items of equal cost whose inputs thread t produced in an earlier contiguous loop of the same
// size and thread count, so they are still in its cache).
enum class Schedule { dynamic, contiguous };

template <class Body>
void parallel_for(Index n, Body&& body, const ParallelOptions& options = {},
                  Schedule schedule = Schedule::dynamic) {
#ifdef _OPENMP
  const int threads = thread_count(options);
  if (threads > 1 && n > 1) {
    std::exception_ptr failure;
    std::mutex failure_mutex;
    const auto run = [&](Index i) {
      try {
        body(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
    };
    if (schedule == Schedule::contiguous) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (Index i = 0; i < n; ++i) run(i);
    } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (Index i = 0; i < n; ++i) run(i);
    }
    if (failure) std::rethrow_exception(failure);
    return;
  }
#else
  (void)options;
  (void)schedule;
#endif
  for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace attnlens
