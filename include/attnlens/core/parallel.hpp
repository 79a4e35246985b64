// parallel_for: runs body(i) for i in [0, n) on attnlens's thread pool (core/thread_pool.hpp)
// when attnlens::threads is linked (it defines ATTNLENS_THREADS), serially otherwise. Exceptions
// thrown by the body are rethrown on the caller.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

#ifdef ATTNLENS_THREADS
#include "attnlens/core/thread_pool.hpp"
#endif

#if defined(ATTNLENS_THREADS) && defined(__linux__)
#include <sched.h>
#endif

namespace attnlens {

// More threads than this is a mistake (each has its workspaces), not a request.
inline constexpr int k_max_threads = 1024;

struct ParallelOptions {
  int threads = 0;  // 0: the default (OMP_NUM_THREADS when set, else the cores this process may use)
};

namespace detail {

// OMP_NUM_THREADS's first entry when it is a number in [1, k_max_threads], else the CPUs this
// process may run on (its affinity mask), else the hardware's count.
inline int default_thread_count() {
  static const int count = [] {
    if (const char* variable = std::getenv("OMP_NUM_THREADS")) {
      char* end = nullptr;
      const long value = std::strtol(variable, &end, 10);
      if (end != variable && value >= 1 && value <= k_max_threads) return static_cast<int>(value);
    }
#if defined(ATTNLENS_THREADS) && defined(__linux__)
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0)
      return std::min(CPU_COUNT(&cpus), k_max_threads);
#endif
    return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, k_max_threads);
  }();
  return count;
}

}  // namespace detail

// The number of threads parallel_for uses with these options: 1 without attnlens::threads.
inline int thread_count(const ParallelOptions& options = {}) {
  // Checked before the message is built: this runs for every parallel_for and workspace.
  if (options.threads < 0 || options.threads > k_max_threads)
    detail::require_argument(false, "ParallelOptions::threads",
                             detail::concat("0 (the default) to ", k_max_threads), options.threads);
#ifdef ATTNLENS_THREADS
  return options.threads > 0 ? options.threads : detail::default_thread_count();
#else
  return 1;
#endif
}

// The index of the calling thread inside parallel_for's team, in [0, thread_count(options)):
// per-thread workspaces are indexed by it.
inline int thread_index() {
#ifdef ATTNLENS_THREADS
  return detail::current_team_index();
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

namespace detail {

// For the duration of a nested parallel_for, which runs its items on the calling thread: that
// thread is index 0 of its one-thread team, as OpenMP numbers a nested region's thread.
class NestedTeam {
 public:
#ifdef ATTNLENS_THREADS
  NestedTeam() : outer_(current_team_index()) { current_team_index() = 0; }
  ~NestedTeam() { current_team_index() = outer_; }

 private:
  int outer_;
#endif
};

}  // namespace detail

template <class Body>
void parallel_for(Index n, Body&& body, const ParallelOptions& options = {},
                  Schedule schedule = Schedule::dynamic) {
  const int threads = thread_count(options);
#ifdef ATTNLENS_THREADS
  if (threads > 1 && n > 1 && !detail::inside_team()) {
    // Items the pool hands out: every index (dynamic; blocks when n is beyond the claim word)
    // or one contiguous block per thread.
    const Index blocks = schedule == Schedule::contiguous
                             ? std::min<Index>(threads, n)
                             : std::min<Index>(n, detail::ThreadPool::k_max_items);
    struct Job {
      Body* body;
      Index n, blocks;
      std::exception_ptr failure;
      std::mutex failure_mutex;
    } job{&body, n, blocks, nullptr, {}};
    const auto run_block = [](void* context, Index block) {
      Job& job = *static_cast<Job*>(context);
      const Index begin = block * job.n / job.blocks, end = (block + 1) * job.n / job.blocks;
      try {
        for (Index i = begin; i < end; ++i) (*job.body)(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(job.failure_mutex);
        if (!job.failure) job.failure = std::current_exception();
      }
    };
    if (detail::ThreadPool::instance().try_run(blocks, static_cast<int>(std::min<Index>(threads, n)),
                                               run_block, &job,
                                               schedule == Schedule::contiguous)) {
      if (job.failure) std::rethrow_exception(job.failure);
      return;
    }
  }
  const detail::NestedTeam nested_team;  // index 0 for a nested loop, as in any one-thread team
#else
  (void)threads;
  (void)schedule;
#endif
  for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace attnlens
