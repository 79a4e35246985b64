// train/data_order.hpp: the seeded permutation is a permutation, fixed for a seed (the first
// indices below come from a Python transcription of Fisher-Yates on PortableRng and agree with
// the C++), different for another seed or epoch and uniform over many draws; DataOrder's
// batches cover each example once per epoch (drop_last leaves the remainder out); gathering a
// batch along the first axis. (It sits in tests/io beside the data loaders.)
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "attnlens/train/data_order.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

bool order_is_permutation(std::vector<Index> order) {
  std::sort(order.begin(), order.end());
  for (std::size_t i = 0; i < order.size(); ++i)
    if (order[i] != static_cast<Index>(i)) return false;
  return true;
}

TEST(DataOrder, PermutationIsFixedForASeed) {
  PortableRng rng(1234, 0);
  const std::vector<Index> ten = random_permutation(10, rng);
  EXPECT_EQ(ten, (std::vector<Index>{6, 8, 0, 5, 1, 9, 3, 4, 7, 2}));

  DataOrderOptions options;
  options.seed = 1234;
  const DataOrder order(60000, options);
  const std::vector<Index> epoch0 = order.epoch_order(0), epoch1 = order.epoch_order(1);
  EXPECT_TRUE(order_is_permutation(epoch0));
  EXPECT_TRUE(order_is_permutation(epoch1));
  EXPECT_EQ(std::vector<Index>(epoch0.begin(), epoch0.begin() + 8),
            (std::vector<Index>{24951, 41280, 56264, 54922, 4356, 1354, 49547, 45986}));
  EXPECT_EQ(std::vector<Index>(epoch1.begin(), epoch1.begin() + 8),
            (std::vector<Index>{48007, 53618, 11927, 50360, 46626, 4059, 10734, 34749}));
  EXPECT_EQ(order.epoch_order(0), epoch0);  // the same on every call

  options.seed = 1235;
  const std::vector<Index> other = DataOrder(60000, options).epoch_order(0);
  EXPECT_TRUE(order_is_permutation(other));
  EXPECT_NE(other, epoch0);
  const auto same = std::inner_product(other.begin(), other.end(), epoch0.begin(), Index{0},
                                       std::plus<>(), [](Index a, Index b) { return a == b; });
  EXPECT_LT(same, 10);  // about 1 fixed point expected between two random orders
}

TEST(DataOrder, PermutationsAreUniform) {
  // Each of the 6 orders of 3 elements 1/6 of the time; each position uniform for 5.
  std::vector<int> counts(6, 0);
  PortableRng rng(8);
  for (int i = 0; i < 60000; ++i) {
    const std::vector<Index> p = random_permutation(3, rng);
    ++counts[static_cast<std::size_t>(p[0] * 2 + (p[1] > p[2] ? 1 : 0))];
  }
  for (const int c : counts) EXPECT_NEAR(c, 10000, 460);  // 5 sigma
  std::vector<int> where_zero(5, 0);
  for (int i = 0; i < 50000; ++i) {
    const std::vector<Index> p = random_permutation(5, rng);
    ++where_zero[static_cast<std::size_t>(std::find(p.begin(), p.end(), 0) - p.begin())];
  }
  for (const int c : where_zero) EXPECT_NEAR(c, 10000, 450);
  EXPECT_TRUE(random_permutation(0, rng).empty());
  EXPECT_EQ(random_permutation(1, rng), std::vector<Index>{0});
}

TEST(DataOrder, BatchesCoverEveryExampleOncePerEpoch) {
  DataOrderOptions options;
  options.batch_size = 4;
  options.seed = 3;
  const DataOrder order(10, options);
  EXPECT_EQ(order.batches(), 3);
  EXPECT_EQ(order.examples_per_epoch(), 10);
  const std::vector<Index> epoch = order.epoch_order(5);
  std::vector<Index> seen;
  for (Index b = 0; b < order.batches(); ++b) {
    const std::vector<Index> batch = order.batch(epoch, b);
    EXPECT_EQ(static_cast<Index>(batch.size()), b < 2 ? 4 : 2);
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  EXPECT_EQ(seen, epoch);

  options.drop_last = true;
  const DataOrder dropping(10, options);
  EXPECT_EQ(dropping.batches(), 2);
  EXPECT_EQ(dropping.examples_per_epoch(), 8);
  EXPECT_EQ(DataOrder(12, options).batches(), 3);
  EXPECT_EQ(DataOrder(3, options).batches(), 0);

  options.shuffle = false;
  EXPECT_EQ(DataOrder(5, options).epoch_order(7), (std::vector<Index>{0, 1, 2, 3, 4}));

  expect_error_naming<ArgumentError>([&] { order.batch(epoch, 3); }, "DataOrder::batch b");
  expect_error_naming<ShapeError>([&] { order.batch({0, 1}, 0); }, "DataOrder::batch order");
  options.batch_size = 0;
  expect_error_naming<ArgumentError>([&] { DataOrder(5, options); }, "batch_size");
}

TEST(DataOrder, GatherTakesEntriesAlongTheFirstAxis) {
  Tensor<float> images({3, 1, 2, 2});
  std::iota(images.storage().begin(), images.storage().end(), 0.0f);
  const Tensor<float> batch = gather_first_axis(images, {2, 0, 2});
  EXPECT_EQ(batch.shape(), (Shape{3, 1, 2, 2}));
  EXPECT_EQ(batch.storage(), (Tensor<float>::Storage{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11}));
  const std::vector<Index> labels{7, 8, 9};
  EXPECT_EQ(gather_first_axis(labels, {2, 0}), (std::vector<Index>{9, 7}));
  EXPECT_EQ(gather_first_axis(images, {}).shape(), (Shape{0, 1, 2, 2}));
  expect_error_naming<ArgumentError>(
      [&] {
        gather_first_axis(images, {0, 3});
      },
      "gather_first_axis indices[1]");
  expect_error_naming<ArgumentError>([&] { gather_first_axis(labels, {-1}); }, "indices[0]");
}

}  // namespace
}  // namespace attnlens
