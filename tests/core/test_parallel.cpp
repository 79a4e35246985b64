#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "attnlens/core/parallel.hpp"

namespace attnlens {
namespace {

TEST(ParallelFor, VisitsEveryIndexOnce) {
  for (int threads : {1, 2, 3}) {
    std::vector<int> visits(1000, 0);
    parallel_for(
        static_cast<Index>(visits.size()), [&](Index i) { ++visits[static_cast<std::size_t>(i)]; },
        ParallelOptions{threads});
    for (int v : visits) EXPECT_EQ(v, 1);
  }
}

TEST(ParallelFor, RethrowsTheBodysException) {
  EXPECT_THROW(parallel_for(
                   100,
                   [](Index i) {
                     if (i == 37) throw std::runtime_error("boom");
                   },
                   ParallelOptions{2}),
               std::runtime_error);
}

TEST(ParallelFor, ContiguousScheduleVisitsEveryIndexOnce) {
  for (int threads : {1, 2, 3, 5}) {
    for (Index n : {2, 3, 7, 1000}) {
      std::vector<int> visits(static_cast<std::size_t>(n), 0);
      parallel_for(
          n, [&](Index i) { ++visits[static_cast<std::size_t>(i)]; }, ParallelOptions{threads},
          Schedule::contiguous);
      for (int v : visits) EXPECT_EQ(v, 1) << threads << " threads, n " << n;
    }
  }
}

// Many short jobs back to back: workers that wake late find the next job published, which is
// where claiming an item of a newer job with an older job's fields would show as a wrong sum.
TEST(ParallelFor, ManyShortJobsEachRunExactlyTheirItems) {
  for (int threads : {2, 4}) {
    for (int job = 0; job < 3000; ++job) {
      const Index n = 1 + job % 5;
      std::vector<std::atomic<int>> visits(static_cast<std::size_t>(n));
      parallel_for(
          n, [&](Index i) { visits[static_cast<std::size_t>(i)].fetch_add(job); },
          ParallelOptions{threads}, job % 2 ? Schedule::dynamic : Schedule::contiguous);
      for (const auto& v : visits) ASSERT_EQ(v.load(), job) << threads << " threads";
    }
  }
}

TEST(ParallelFor, ThreadIndexIsInsideTheTeam) {
  for (int threads : {1, 2, 3}) {
    std::vector<int> index_of(500, -1);
    parallel_for(
        500, [&](Index i) { index_of[static_cast<std::size_t>(i)] = thread_index(); },
        ParallelOptions{threads});
    for (int index : index_of) {
      EXPECT_GE(index, 0);
      EXPECT_LT(index, thread_count(ParallelOptions{threads}));
    }
  }
  EXPECT_EQ(thread_index(), 0);  // the caller, outside any loop
}

// A loop inside a loop runs on the thread that reached it, as index 0 of a team of one (as an
// OpenMP nested region): a PerThread made inside it with one slot is safe.
TEST(ParallelFor, NestedLoopRunsOnItsThreadAsIndexZero) {
  std::vector<int> inner_visits(4 * 50, 0);
  std::vector<int> inner_index(4 * 50, -1);
  parallel_for(
      4,
      [&](Index outer) {
        const int outer_index = thread_index();
        parallel_for(
            50,
            [&](Index inner) {
              const auto k = static_cast<std::size_t>(outer * 50 + inner);
              ++inner_visits[k];
              inner_index[k] = thread_index();
            },
            ParallelOptions{2});
        EXPECT_EQ(thread_index(), outer_index);  // restored after the inner loop
      },
      ParallelOptions{2});
  for (int v : inner_visits) EXPECT_EQ(v, 1);
  for (int index : inner_index) EXPECT_EQ(index, 0);
}

// Two threads of the program calling parallel_for at once: one gets the pool, the other runs
// its items itself; both finish with every index visited once.
TEST(ParallelFor, ConcurrentCallersBothFinish) {
  std::vector<std::vector<int>> visits(2, std::vector<int>(20000, 0));
  std::vector<std::thread> callers;
  for (int c = 0; c < 2; ++c)
    callers.emplace_back([&, c] {
      for (int repeat = 0; repeat < 20; ++repeat)
        parallel_for(
            1000,
            [&](Index i) { ++visits[static_cast<std::size_t>(c)][repeat * 1000 + i]; },
            ParallelOptions{2});
    });
  for (auto& caller : callers) caller.join();
  for (const auto& of_caller : visits)
    for (int v : of_caller) EXPECT_EQ(v, 1);
}

TEST(ParallelFor, PoolRunsAgainAfterAnException) {
  EXPECT_THROW(parallel_for(
                   10, [](Index) { throw std::runtime_error("every item"); },
                   ParallelOptions{2}, Schedule::contiguous),
               std::runtime_error);
  std::atomic<int> sum{0};
  parallel_for(100, [&](Index i) { sum += static_cast<int>(i); }, ParallelOptions{2});
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ParallelFor, ThreadCountFollowsTheOptions) {
#ifdef ATTNLENS_THREADS
  EXPECT_EQ(thread_count(ParallelOptions{3}), 3);
#else
  EXPECT_EQ(thread_count(ParallelOptions{3}), 1);
#endif
  EXPECT_GE(thread_count(), 1);
}

TEST(ParallelFor, ThreadCountOutOfRangeIsAnArgumentError) {
  for (int threads : {-1, k_max_threads + 1, 100000}) {
    try {
      thread_count(ParallelOptions{threads});
      ADD_FAILURE() << threads << " threads were accepted";
    } catch (const ArgumentError& error) {
      EXPECT_NE(std::string(error.what()).find("ParallelOptions::threads"), std::string::npos);
      EXPECT_NE(std::string(error.what()).find(std::to_string(threads)), std::string::npos);
    }
    EXPECT_THROW(parallel_for(4, [](Index) {}, ParallelOptions{threads}), ArgumentError);
  }
}

}  // namespace
}  // namespace attnlens
