// ThreadPool: the worker threads behind parallel_for (core/parallel.hpp). One pool per process,
// grown on demand to the largest team asked for; the calling thread is member 0 of every team.
//
// Why not OpenMP: libgomp's idle threads spin for milliseconds at every barrier and between
// parallel regions unless OMP_WAIT_POLICY=PASSIVE is set before the program starts, so on a
// machine whose other core is busy, a thread that waits spins on the core the late thread needs,
// and two threads ran 40% slower than one (docs/performance.md, "Threads"). Here a worker with
// nothing to do spins long only while there is a core for every thread that wants one, and
// sleeps soon otherwise; and the caller waits only for items some thread has claimed, never for
// a worker that has not woken up yet: the items it has not claimed, the caller runs.
//
// The protocol. A job is published as a 64-bit claim word, (generation << 32) | next item, and
// a few fields (the task, its context, the item count, the team size). Publishing a job first
// stores the word with the next item `k_publishing`, then the fields, then (generation, first
// item). A thread reads the word, then the fields, then the word again: when the generation is
// still the same and not being published, the fields it read are that job's (all atomics are
// sequentially consistent, so a later job's fields cannot be read before its word is). Items are
// claimed by compare-and-swap on the word, which fails once the generation has moved on, so a
// thread that slept through a job can never claim an item of the next one with the old fields.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "attnlens/core/types.hpp"

#ifdef __linux__
#include <fcntl.h>
#include <unistd.h>
#endif

namespace attnlens::detail {

// The index of the calling thread in the team running its items: 0 for the caller of
// parallel_for (and any thread outside a team), 1, 2, ... for the pool's workers.
inline int& current_team_index() {
  thread_local int index = 0;
  return index;
}

// Whether the calling thread is running an item of a team (a nested parallel_for then runs its
// items itself).
inline bool& inside_team() {
  thread_local bool inside = false;
  return inside;
}

class ThreadPool {
 public:
  // Runs task(context, item) for every item in [0, items); the task does not throw.
  using Task = void (*)(void* context, Index item);

  // At most this many items per job: the claim word holds the next item in 32 bits.
  static constexpr Index k_max_items = Index{1} << 30;

  // The process's pool. Never destroyed: its workers sleep in a condition variable at exit, and
  // a static destructor joining them could run while another thread still dispatches.
  static ThreadPool& instance() {
    static ThreadPool* const pool = new ThreadPool;
    return *pool;
  }

  // Runs every item on a team of up to `team` threads (the caller and team - 1 workers; fewer
  // when the system cannot start more threads) and returns when all have run. With
  // first_to_caller, the caller runs item 0 itself and the others claim from item 1 (a
  // contiguous schedule: block 0 stays with the thread that runs block 0 of the loop before).
  // Returns false, having run nothing, when another thread's job holds the pool.
  bool try_run(Index items, int team, Task task, void* context, bool first_to_caller) {
    std::unique_lock<std::mutex> dispatch(dispatch_mutex_, std::try_to_lock);
    if (!dispatch.owns_lock()) return false;
    team = std::min(team, 1 + grow(team - 1));
    check_crowding(team);
    const auto count = static_cast<std::uint32_t>(items);
    const std::uint32_t generation = generation_ + 1;
    generation_ = generation;
    claim_.store(pack(generation, k_publishing));
    task_.store(task);
    context_.store(context);
    items_.store(count);
    team_.store(team);
    done_.store(0);
    claim_.store(pack(generation, first_to_caller ? 1 : 0));
    wake_workers();

    if (first_to_caller) run_item(task, context, 0, count);
    claim_items(generation, task, context, count);
    wait_until_done(count);
    return true;
  }

 private:
  static constexpr std::uint32_t k_publishing = 0xffffffffu;
  // How long a worker looks for the next job before it sleeps: long enough to span the serial
  // code between two parallel loops (a layer norm, a residual add: up to about a millisecond),
  // since waking a sleeping thread costs 20-100 us on a virtual machine. But while other
  // programs want the cores, a spinning worker takes the core the caller's serial code needs,
  // and then it sleeps almost at once. The caller waits for the items still running briefly:
  // a sleeping caller frees its core for the late thread.
  static constexpr std::chrono::microseconds k_spin_alone{1000};
  static constexpr std::chrono::microseconds k_spin_crowded{50};
  static constexpr std::chrono::microseconds k_wait{50};
  // Crowding is read at most this often, and counts for this long once seen.
  static constexpr std::chrono::milliseconds k_crowding_period{10};
  static constexpr std::chrono::milliseconds k_crowding_memory{200};

  ThreadPool() = default;

  static std::uint64_t pack(std::uint32_t generation, std::uint32_t next) {
    return (std::uint64_t{generation} << 32) | next;
  }
  static std::uint32_t generation_of(std::uint64_t word) {
    return static_cast<std::uint32_t>(word >> 32);
  }
  static std::uint32_t next_of(std::uint64_t word) { return static_cast<std::uint32_t>(word); }

  static void pause() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_ia32_pause();  // _mm_pause without <immintrin.h>
#else
    std::this_thread::yield();
#endif
  }

  // Spins until ready() or `limit` has passed; true when ready.
  template <class Ready>
  static bool spin_until(Ready&& ready, std::chrono::microseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (int round = 1;; ++round) {
      if (ready()) return true;
      pause();
      if (round % 64 == 0 && std::chrono::steady_clock::now() > deadline) return ready();
    }
  }

  // Starts workers until there are `wanted` (or the system refuses); returns how many there are.
  int grow(int wanted) {
    while (static_cast<int>(workers_.size()) < wanted) {
      const int index = static_cast<int>(workers_.size()) + 1;
      try {
        workers_.emplace_back([this, index, seen = generation_] { work(index, seen); });
      } catch (const std::system_error&) {
        break;  // run with the workers there are
      }
      workers_.back().detach();
    }
    return static_cast<int>(workers_.size());
  }

  // Whether more threads want to run than there are CPUs: the kernel's count of runnable threads
  // (/proc/loadavg), less this process's running ones (the caller, the spinning workers), plus
  // this team. Only on Linux; elsewhere workers always spin briefly.
  void check_crowding(int team) {
#ifdef __linux__
    const auto now = std::chrono::steady_clock::now();
    if (now - crowding_checked_ < k_crowding_period) return;
    crowding_checked_ = now;
    const int runnable = runnable_threads();
    if (runnable < 0) {
      crowded_.store(true);
      return;
    }
    // Two readings in a row: a thread that ran for a moment (a daemon, a worker on its way to
    // sleep) is not a program competing for the cores.
    const int others = runnable - 1 - spinning_workers_.load();
    crowded_readings_ = others + team > online_cpus_ ? crowded_readings_ + 1 : 0;
    if (crowded_readings_ >= 2) crowded_until_ = now + k_crowding_memory;
    crowded_.store(now < crowded_until_);
#else
    (void)team;
    crowded_.store(true);
#endif
  }

#ifdef __linux__
  // The "running" of /proc/loadavg's "running/total" field, or -1.
  static int runnable_threads() {
    const int file = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (file < 0) return -1;
    char text[128];
    const ssize_t length = ::read(file, text, sizeof(text) - 1);
    ::close(file);
    if (length <= 0) return -1;
    text[length] = '\0';
    for (ssize_t i = 0; i < length; ++i) {
      if (text[i] != '/') continue;
      ssize_t begin = i;
      while (begin > 0 && text[begin - 1] >= '0' && text[begin - 1] <= '9') --begin;
      if (begin == i) return -1;
      int running = 0;
      for (ssize_t d = begin; d < i && running < 1000000; ++d) running = running * 10 + (text[d] - '0');
      return running;
    }
    return -1;
  }
#endif

  void wake_workers() {
    if (sleeping_workers_.load() == 0) return;
    const std::lock_guard<std::mutex> lock(sleep_mutex_);
    work_arrived_.notify_all();
  }

  // Runs one item and counts it; the thread that finishes the last one wakes a sleeping caller.
  void run_item(Task task, void* context, std::uint32_t item, std::uint32_t items) {
    inside_team() = true;
    task(context, static_cast<Index>(item));
    inside_team() = false;
    if (done_.fetch_add(1) + 1 == items && caller_sleeping_.load()) {
      const std::lock_guard<std::mutex> lock(done_mutex_);
      all_done_.notify_one();
    }
  }

  // Claims and runs items of job `generation` until none is left.
  void claim_items(std::uint32_t generation, Task task, void* context,
                   std::uint32_t items) {
    std::uint64_t word = claim_.load();
    while (generation_of(word) == generation && next_of(word) < items) {
      if (!claim_.compare_exchange_weak(word, word + 1)) continue;
      run_item(task, context, next_of(word), items);
      word = claim_.load();
    }
  }

  // Called when no item is left to claim: the ones not done are running on workers.
  void wait_until_done(std::uint32_t items) {
    if (spin_until([&] { return done_.load() == items; }, k_wait)) return;
    std::unique_lock<std::mutex> lock(done_mutex_);
    caller_sleeping_.store(true);
    all_done_.wait(lock, [&] { return done_.load() == items; });
    caller_sleeping_.store(false);
  }

  void work(int index, std::uint32_t seen) {
    current_team_index() = index;
    for (;;) {
      const std::uint64_t word = wait_for_job(seen);
      const std::uint32_t generation = generation_of(word);
      // The job's fields, then the word again: the same generation means they are its own.
      const Task task = task_.load();
      void* const context = context_.load();
      const std::uint32_t items = items_.load();
      const int team = team_.load();
      const std::uint64_t again = claim_.load();
      if (generation_of(again) != generation || next_of(again) == k_publishing) continue;
      seen = generation;
      if (index < team) claim_items(generation, task, context, items);
    }
  }

  // The claim word of a job newer than `seen`, once it is published.
  std::uint64_t wait_for_job(std::uint32_t seen) {
    const auto published = [&] {
      const std::uint64_t word = claim_.load();
      return generation_of(word) != seen && next_of(word) != k_publishing;
    };
    spinning_workers_.fetch_add(1);
    const bool arrived = spin_until(published, crowded_.load() ? k_spin_crowded : k_spin_alone);
    spinning_workers_.fetch_sub(1);
    if (!arrived) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      sleeping_workers_.fetch_add(1);
      work_arrived_.wait(lock, published);
      sleeping_workers_.fetch_sub(1);
    }
    return claim_.load();
  }

  std::mutex dispatch_mutex_;           // one job at a time
  std::uint32_t generation_ = 0;        // the last job's, under dispatch_mutex_
  std::vector<std::thread> workers_;    // detached; under dispatch_mutex_
  std::chrono::steady_clock::time_point crowding_checked_{}, crowded_until_{};  // likewise
  int crowded_readings_ = 0;                                                      // likewise
#ifdef __linux__
  const int online_cpus_ = static_cast<int>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
#endif
  std::atomic<bool> crowded_{false};
  std::atomic<int> spinning_workers_{0};

  std::atomic<std::uint64_t> claim_{0};
  std::atomic<Task> task_{nullptr};
  std::atomic<void*> context_{nullptr};
  std::atomic<std::uint32_t> items_{0};
  std::atomic<int> team_{0};
  std::atomic<std::uint32_t> done_{0};

  std::mutex sleep_mutex_;
  std::condition_variable work_arrived_;
  std::atomic<int> sleeping_workers_{0};

  std::mutex done_mutex_;
  std::condition_variable all_done_;
  std::atomic<bool> caller_sleeping_{false};
};

}  // namespace attnlens::detail
