// train/listops.hpp: every label is the value of its expression as a recursive-descent parser
// written here reads it (over many seeds, with the tree's shape within max_depth and max_args),
// lengths stay in the asked range, a seed fixes the data (the first examples pinned to a Python
// transcription of PortableRng and the generator), every operator and label occurs, MED of an
// even count takes the integer part of the middle pair's mean, batches pad and mask, and bad
// options are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/train/listops.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

ListOpsOptions listops_options(Index min_length, Index max_length, Index max_depth, Index max_args,
                               std::uint64_t seed) {
  ListOpsOptions options;
  options.min_length = min_length;
  options.max_length = max_length;
  options.max_depth = max_depth;
  options.max_args = max_args;
  options.seed = seed;
  return options;
}

// An evaluator of its own: expr := digit | op expr expr+ "]", op in [MIN [MAX [MED [SM. It reads
// the text and records the deepest digit (the root at depth 1) and the most arguments of a list.
class ListOpsParser {
 public:
  explicit ListOpsParser(const std::string& text) {
    std::istringstream in(text);
    for (std::string word; in >> word;) words_.push_back(word);
  }

  // The expression's value; fails the test if the text is not one whole expression.
  int evaluate() {
    const int value = expression(1);
    EXPECT_EQ(next_, words_.size()) << "trailing tokens";
    return value;
  }

  int deepest = 0;
  int most_arguments = 0;
  std::set<std::string> operators;

 private:
  int expression(int depth) {
    if (next_ >= words_.size()) {
      ADD_FAILURE() << "the text ends inside an expression";
      return -1;
    }
    const std::string word = words_[next_++];
    if (word.size() == 1 && word[0] >= '0' && word[0] <= '9') {
      deepest = std::max(deepest, depth);
      return word[0] - '0';
    }
    EXPECT_TRUE(word == "[MIN" || word == "[MAX" || word == "[MED" || word == "[SM") << word;
    operators.insert(word);
    std::vector<int> arguments;
    while (next_ < words_.size() && words_[next_] != "]")
      arguments.push_back(expression(depth + 1));
    EXPECT_LT(next_, words_.size()) << "a list is not closed";
    ++next_;
    EXPECT_GE(arguments.size(), 2u) << word;
    most_arguments = std::max(most_arguments, static_cast<int>(arguments.size()));
    std::sort(arguments.begin(), arguments.end());
    const std::size_t n = arguments.size();
    if (word == "[MIN") return arguments.front();
    if (word == "[MAX") return arguments.back();
    if (word == "[MED")  // int(np.median(...)): the middle pair's mean, truncated
      return n % 2 == 1 ? arguments[n / 2] : (arguments[n / 2 - 1] + arguments[n / 2]) / 2;
    int sum = 0;
    for (int a : arguments) sum += a;
    return sum % 10;
  }

  std::vector<std::string> words_;
  std::size_t next_ = 0;
};

TEST(ListOps, LabelIsTheValueOfTheExpression) {
  ListOpsOptions options;  // LRA's tree at 128..512 tokens
  std::set<std::string> operators;
  std::set<Index> labels;
  int deepest = 0, most_arguments = 0;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    options.seed = seed;
    for (Index i = 0; i < 20; ++i) {
      const ListOpsExample example = listops_example(i, options);
      const std::string text = listops_text(example.tokens);
      ListOpsParser parser(text);
      ASSERT_EQ(parser.evaluate(), example.label)
          << "seed " << seed << ", example " << i << ": " << text;
      const auto length = static_cast<Index>(example.tokens.size());
      EXPECT_GE(length, options.min_length);
      EXPECT_LE(length, options.max_length);
      EXPECT_LE(parser.deepest, options.max_depth);
      EXPECT_LE(parser.most_arguments, options.max_args);
      operators.insert(parser.operators.begin(), parser.operators.end());
      labels.insert(example.label);
      deepest = std::max(deepest, parser.deepest);
      most_arguments = std::max(most_arguments, parser.most_arguments);
    }
  }
  // Every operator and every label occurs, and the trees reach their limits.
  EXPECT_EQ(operators, (std::set<std::string>{"[MIN", "[MAX", "[MED", "[SM"}));
  EXPECT_EQ(labels.size(), 10u);
  EXPECT_EQ(deepest, options.max_depth);
  EXPECT_EQ(most_arguments, options.max_args);
}

TEST(ListOps, LengthsStayInTheRange) {
  struct Case {
    Index min_length, max_length, max_depth, max_args;
  };
  for (const Case& c : {Case{16, 40, 4, 5}, Case{30, 30, 6, 4}, Case{1, 1, 10, 10},
                        Case{500, 2000, 10, 10}, Case{4, 4, 2, 2}}) {
    const ListOpsOptions options =
        listops_options(c.min_length, c.max_length, c.max_depth, c.max_args, 3);
    for (Index i = 0; i < 30; ++i) {
      const ListOpsExample example = listops_example(i, options);
      const auto length = static_cast<Index>(example.tokens.size());
      ASSERT_GE(length, c.min_length);
      ASSERT_LE(length, c.max_length);
      ListOpsParser parser(listops_text(example.tokens));
      ASSERT_EQ(parser.evaluate(), example.label);
      ASSERT_LE(parser.deepest, c.max_depth);
    }
  }
}

TEST(ListOps, FixedBySeedAndPinned) {
  // From a Python transcription of PortableRng and the draw (stream i of the seed; per node
  // uniform() < 0.25 opens a list of 2 + below(max_args - 1) arguments under operator below(4),
  // else the digit below(10)).
  const ListOpsOptions options = listops_options(10, 24, 4, 4, 1);
  const std::string expected[] = {"[MIN [SM 1 [SM 7 0 ] 0 6 ] [MIN 2 3 [MAX 5 5 9 3 ] ] ]",
                                  "[MIN [MAX 0 3 [SM 0 4 ] 6 ] [MAX 0 1 ] ]",
                                  "[MIN [SM 0 [SM 8 6 9 ] 8 ] 6 ]"};
  const Index labels[] = {2, 1, 1};
  for (Index i = 0; i < 3; ++i) {
    const ListOpsExample example = listops_example(i, options);
    EXPECT_EQ(listops_text(example.tokens), expected[i]);
    EXPECT_EQ(example.label, labels[i]);
  }
  // The same seed gives the same examples, another seed others.
  ListOpsOptions defaults;
  defaults.seed = 7;
  const ListOpsExample a = listops_example(5, defaults);
  EXPECT_EQ(listops_example(5, defaults).tokens, a.tokens);
  defaults.seed = 8;
  EXPECT_NE(listops_example(5, defaults).tokens, a.tokens);
  EXPECT_NE(listops_example(6, options).tokens, listops_example(5, options).tokens);
}

TEST(ListOps, MedianOfAnEvenCountTruncatesTheMiddleMean) {
  const auto median = [](std::initializer_list<Index> values) {
    detail::ListOpsFrame frame;
    frame.op = k_listops_median;
    for (Index v : values) ++frame.counts[static_cast<std::size_t>(v)];
    return detail::listops_apply(frame);
  };
  EXPECT_EQ(median({1, 2}), 1);        // 1.5
  EXPECT_EQ(median({9, 2}), 5);        // 5.5
  EXPECT_EQ(median({3, 9, 4, 6}), 5);  // (4 + 6) / 2
  EXPECT_EQ(median({7, 0, 7}), 7);
  EXPECT_EQ(median({0, 0, 9, 9, 9}), 9);
  detail::ListOpsFrame sum;
  sum.op = k_listops_sum_mod;
  sum.counts[9] = 3;
  sum.counts[4] = 1;
  EXPECT_EQ(detail::listops_apply(sum), 1);  // 31 mod 10
}

TEST(ListOps, BatchesPadAndMask) {
  const ListOpsOptions options = listops_options(20, 60, 10, 10, 11);
  const ListOpsBatch batch = listops_batch(4, 6, options);
  Index longest = 0;
  for (Index b = 0; b < 6; ++b) {
    const ListOpsExample example = listops_example(4 + b, options);
    const auto n = static_cast<Index>(example.tokens.size());
    longest = std::max(longest, n);
    EXPECT_EQ(batch.lengths[static_cast<std::size_t>(b)], n);
    EXPECT_EQ(batch.labels[static_cast<std::size_t>(b)], example.label);
  }
  ASSERT_EQ(batch.tokens.shape(), (Shape{6, longest}));
  ASSERT_EQ(batch.keep.shape(), (Shape{6, longest}));
  for (Index b = 0; b < 6; ++b) {
    const ListOpsExample example = listops_example(4 + b, options);
    const auto n = static_cast<Index>(example.tokens.size());
    for (Index j = 0; j < longest; ++j) {
      const Index token = batch.tokens.at({b, j});
      EXPECT_EQ(token, j < n ? example.tokens[static_cast<std::size_t>(j)] : k_listops_padding);
      EXPECT_EQ(batch.keep.at({b, j}), j < n ? 1 : 0);
      EXPECT_TRUE(token >= 0 && token < k_listops_vocabulary_size);
    }
  }
  // A fixed length pads further; a batch is the examples it names, whatever its cut.
  const ListOpsBatch wide = listops_batch(4, 6, options, 64);
  EXPECT_EQ(wide.tokens.shape(), (Shape{6, 64}));
  EXPECT_EQ(wide.lengths, batch.lengths);
  EXPECT_EQ(listops_batch(7, 2, options).labels,
            (std::vector<Index>(batch.labels.begin() + 3, batch.labels.begin() + 5)));
  EXPECT_EQ(listops_batch(0, 0, options).tokens.shape(), (Shape{0, 0}));
  // Examples held in memory (a fixed set that DataOrder cuts into batches) make the same batch.
  const std::vector<ListOpsExample> held = listops_examples(4, 6, options);
  ASSERT_EQ(held.size(), 6u);
  const ListOpsBatch from_held = listops_batch(held);
  EXPECT_EQ(from_held.tokens.storage(), batch.tokens.storage());
  EXPECT_EQ(from_held.keep.storage(), batch.keep.storage());
  EXPECT_EQ(from_held.lengths, batch.lengths);
  EXPECT_EQ(from_held.labels, batch.labels);
  EXPECT_EQ(listops_batch(held, 64).tokens.storage(), wide.tokens.storage());
  expect_error_naming<ArgumentError>(
      [&] { listops_batch(held, longest - 1); },
      detail::concat("listops_batch padded_length: expected 0 (the batch's longest) or >= the "
                     "longest example (",
                     longest, ")"));
  // The vocabulary reads back.
  EXPECT_EQ(listops_text({k_listops_max, 5, 4, k_listops_min, 3, 4, k_listops_close, 2, 1,
                          k_listops_close, k_listops_padding}),
            "[MAX 4 3 [MIN 2 3 ] 1 0 ]");
}

TEST(ListOps, BadOptionsAreNamed) {
  // One field out of its domain, the others at their defaults.
  const std::vector<std::pair<std::function<void(ListOpsOptions&)>, std::string>> cases{
      {[](ListOpsOptions& o) { o.min_length = 0; },
       "ListOpsOptions::min_length: expected >= 1, got 0"},
      {[](ListOpsOptions& o) { o.max_length = 100; },
       "ListOpsOptions::max_length: expected >= min_length (128)"},
      {[](ListOpsOptions& o) { o.max_depth = 0; }, "ListOpsOptions::max_depth"},
      {[](ListOpsOptions& o) { o.max_args = 1; }, "ListOpsOptions::max_args: expected >= 2, got 1"},
      {[](ListOpsOptions& o) { o.operator_probability = 1.5; },
       "ListOpsOptions::operator_probability"},
      {[](ListOpsOptions& o) { o.max_attempts = 0; },
       "ListOpsOptions::max_attempts: expected >= 1"},
      // Possible but never drawn: only digits.
      {[](ListOpsOptions& o) {
         o.operator_probability = 0;
         o.max_attempts = 50;
       },
       "ListOpsOptions::max_attempts: no expression of 128..512 tokens in 50 draws for example 0"}};
  for (const auto& [spoil, message] : cases) {
    ListOpsOptions options;
    spoil(options);
    expect_error_naming<ArgumentError>([&] { listops_example(0, options); }, message);
  }
  // No tree of depth 3 with 3 arguments has 20 tokens: 2 + 3 (2 + 3 x 1) = 17 at most.
  ListOpsOptions shallow = listops_options(20, 40, 3, 3, 0);
  expect_error_naming<ArgumentError>([&] { listops_example(0, shallow); },
                                     "ListOpsOptions::min_length: expected at most 17");
  shallow.min_length = 17;
  EXPECT_EQ(listops_example(0, shallow).tokens.size(), 17u);
  expect_error_naming<ArgumentError>([] { listops_example(-1, ListOpsOptions{}); },
                                     "listops_example index: expected >= 0, got -1");
  expect_error_naming<ArgumentError>([] { listops_batch(0, 2, ListOpsOptions{}, 100); },
                                     "listops_batch padded_length");
  expect_error_naming<ArgumentError>([] { listops_batch(0, -1, ListOpsOptions{}); },
                                     "listops_batch count");
  expect_error_naming<ArgumentError>([] { listops_examples(-1, 2, ListOpsOptions{}); },
                                     "listops_examples first: expected >= 0, got -1");
  expect_error_naming<ArgumentError>(
      [] {
        listops_text({3, 16});
      },
      "listops_text token: expected an id in [0, 16), got 16");
}

}  // namespace
}  // namespace attnlens
