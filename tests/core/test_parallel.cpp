#include <gtest/gtest.h>

#include <stdexcept>
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

TEST(ParallelFor, ThreadCountFollowsTheOptions) {
#ifdef _OPENMP
  EXPECT_EQ(thread_count(ParallelOptions{3}), 3);
#else
  EXPECT_EQ(thread_count(ParallelOptions{3}), 1);
#endif
  EXPECT_GE(thread_count(), 1);
}

}  // namespace
}  // namespace attnlens
