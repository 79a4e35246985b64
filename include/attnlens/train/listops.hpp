// ListOps (Nangia and Bowman 2018) as the Long Range Arena (Tay et al. 2021) generates it: nested
// lists of digits under MIN, MAX, MED (median) and SM (sum modulo 10), written in prefix form
// `[MAX 4 3 [MIN 2 3 ] 1 0 ]`, labelled with their value 0..9. Example i of a seed is drawn from
// its own PortableRng stream, so a data set is the same on every platform and whatever the
// batches it is cut into (docs/data.md, "ListOps").
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// The vocabulary: token id -> text. 0 pads; digits d are d + 1; then the four operators (each
// token opens its list) and the bracket that closes a list.
inline constexpr Index k_listops_padding = 0;
inline constexpr Index k_listops_first_digit = 1;  // digit d is token d + 1
inline constexpr Index k_listops_min = 11;
inline constexpr Index k_listops_max = 12;
inline constexpr Index k_listops_median = 13;
inline constexpr Index k_listops_sum_mod = 14;
inline constexpr Index k_listops_close = 15;
inline constexpr Index k_listops_vocabulary_size = 16;
inline constexpr const char* k_listops_tokens[k_listops_vocabulary_size] = {
    "<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]"};

struct ListOpsOptions {
  // Every expression has between min_length and max_length tokens (both included; an operator and
  // its closing bracket count one each). LRA asks for 500 < length < 2000.
  Index min_length = 128;
  Index max_length = 512;
  // The root is at depth 1, and a node at depth max_depth is always a digit: at most
  // max_depth - 1 lists nest. LRA's default.
  Index max_depth = 10;
  // An operator takes 2..max_args arguments, uniformly. LRA's default.
  Index max_args = 10;
  // A node above max_depth is an operator with this probability, a digit otherwise (LRA's
  // VALUE_P: a uniform draw r > 0.25 makes a digit).
  double operator_probability = 0.25;
  // Expressions are drawn until one falls in the length range; after this many per example the
  // generator gives up with an ArgumentError (the range is then too narrow for the tree's
  // distribution). At the defaults about one draw in 21 is kept (docs/data.md).
  Index max_attempts = 100000;
  std::uint64_t seed = 0;
};

struct ListOpsExample {
  std::vector<Index> tokens;  // ids of the vocabulary, no padding
  Index label = 0;            // the expression's value, 0..9
};

// Throws ArgumentError naming the first field out of its domain, or min_length when no tree of
// max_depth and max_args is that long.
inline void check_listops_options(const ListOpsOptions& options) {
  using detail::require_argument;
  require_argument(options.min_length >= 1, "ListOpsOptions::min_length", ">= 1",
                   options.min_length);
  require_argument(options.max_length >= options.min_length, "ListOpsOptions::max_length",
                   detail::concat(">= min_length (", options.min_length, ")"), options.max_length);
  require_argument(options.max_depth >= 1, "ListOpsOptions::max_depth", ">= 1", options.max_depth);
  require_argument(options.max_args >= 2, "ListOpsOptions::max_args", ">= 2", options.max_args);
  require_argument(options.operator_probability >= 0 && options.operator_probability <= 1,
                   "ListOpsOptions::operator_probability", "a probability in [0, 1]",
                   options.operator_probability);
  require_argument(options.max_attempts >= 1, "ListOpsOptions::max_attempts", ">= 1",
                   options.max_attempts);
  // The longest tree: a digit at max_depth, 2 + max_args x longest(d + 1) above; saturated at
  // min_length, which is all the check needs.
  Index longest = 1;
  for (Index depth = options.max_depth - 1; depth >= 1 && longest < options.min_length; --depth)
    longest = longest > (options.min_length - 2) / options.max_args
                  ? options.min_length
                  : 2 + options.max_args * longest;
  require_argument(longest >= options.min_length, "ListOpsOptions::min_length",
                   detail::concat("at most ", longest, " (the longest expression of max_depth ",
                                  options.max_depth, " and max_args ", options.max_args, ")"),
                   options.min_length);
}

namespace detail {

// An open list while its arguments are drawn: the operator and how many of each digit it has.
struct ListOpsFrame {
  Index op = k_listops_min;
  Index remaining = 0;
  std::array<Index, 10> counts{};
};

// MIN, MAX, SM (sum mod 10) and MED: the median of the sorted arguments, for an even count the
// mean of the two middle ones rounded down (LRA's int(np.median(...)); the values are >= 0).
inline Index listops_apply(const ListOpsFrame& frame) {
  Index count = 0, sum = 0;
  for (Index d = 0; d < 10; ++d) {
    count += frame.counts[static_cast<std::size_t>(d)];
    sum += d * frame.counts[static_cast<std::size_t>(d)];
  }
  // The k-th smallest argument, k from 0.
  const auto kth = [&](Index k) {
    for (Index d = 0; d < 10; ++d) {
      k -= frame.counts[static_cast<std::size_t>(d)];
      if (k < 0) return d;
    }
    return Index{9};
  };
  switch (frame.op) {
    case k_listops_min:
      return kth(0);
    case k_listops_max:
      return kth(count - 1);
    case k_listops_median:
      return count % 2 == 1 ? kth(count / 2) : (kth(count / 2 - 1) + kth(count / 2)) / 2;
    default:
      return sum % 10;
  }
}

// One draw of LRA's tree (generate_tree), written out token by token: a node at depth d is an
// operator with 2 + below(max_args - 1) arguments (the operator uniform among the four) when
// d < max_depth and uniform() < operator_probability, else the digit below(10). Without
// recursion, so a deep tree needs no stack; gives up (false) as soon as it passes max_length.
inline bool draw_listops_tree(const ListOpsOptions& options, PortableRng& rng,
                              std::vector<Index>& tokens, Index& value) {
  tokens.clear();
  std::vector<ListOpsFrame> open;
  for (;;) {
    const auto depth = static_cast<Index>(open.size()) + 1;
    if (depth < options.max_depth && rng.uniform() < options.operator_probability) {
      ListOpsFrame frame;
      frame.remaining =
          2 + static_cast<Index>(rng.below(static_cast<std::uint64_t>(options.max_args - 1)));
      frame.op = k_listops_min + static_cast<Index>(rng.below(4));
      tokens.push_back(frame.op);
      open.push_back(frame);
    } else {
      value = static_cast<Index>(rng.below(10));
      tokens.push_back(k_listops_first_digit + value);
      // A finished argument goes to its list; a list with all its arguments closes and is an
      // argument of the one around it.
      while (!open.empty()) {
        ListOpsFrame& frame = open.back();
        ++frame.counts[static_cast<std::size_t>(value)];
        if (--frame.remaining > 0) break;
        value = listops_apply(frame);
        tokens.push_back(k_listops_close);
        open.pop_back();
      }
      if (open.empty()) return static_cast<Index>(tokens.size()) <= options.max_length;
    }
    if (static_cast<Index>(tokens.size()) > options.max_length) return false;
  }
}

}  // namespace detail

// Example `index` of the data set `options.seed` names: LRA's trees drawn from stream `index` of
// the seed until one has min_length..max_length tokens (LRA's rejection; drawn trees are not
// de-duplicated, as LRA's set does: at these lengths a repeat is vanishingly rare).
inline ListOpsExample listops_example(Index index, const ListOpsOptions& options) {
  check_listops_options(options);
  detail::require_argument(index >= 0, "listops_example index", ">= 0", index);
  PortableRng rng(options.seed, static_cast<std::uint64_t>(index));
  ListOpsExample example;
  for (Index attempt = 0; attempt < options.max_attempts; ++attempt)
    if (detail::draw_listops_tree(options, rng, example.tokens, example.label) &&
        static_cast<Index>(example.tokens.size()) >= options.min_length)
      return example;
  throw ArgumentError(detail::concat(
      "ListOpsOptions::max_attempts: no expression of ", options.min_length, "..",
      options.max_length, " tokens in ", options.max_attempts, " draws for example ", index,
      " (max_depth ", options.max_depth, ", max_args ", options.max_args, ", operator_probability ",
      options.operator_probability, "); widen the length range or allow more attempts"));
}

// The tokens as text, one space between them: "[MAX 4 3 [MIN 2 3 ] 1 0 ]". Padding is skipped.
inline std::string listops_text(const std::vector<Index>& tokens) {
  std::string text;
  for (Index token : tokens) {
    detail::require_argument(token >= 0 && token < k_listops_vocabulary_size, "listops_text token",
                             detail::concat("an id in [0, ", k_listops_vocabulary_size, ")"),
                             token);
    if (token == k_listops_padding) continue;
    if (!text.empty()) text += ' ';
    text += k_listops_tokens[token];
  }
  return text;
}

// Examples first..first + count - 1 as a batch, padded at the end to a common length.
struct ListOpsBatch {
  Tensor<Index> tokens;        // B x L token ids, k_listops_padding after each expression
  Tensor<std::uint8_t> keep;   // B x L, 1 on tokens and 0 on padding (AttentionMask::key_keep)
  std::vector<Index> lengths;  // B: each expression's token count (AttentionMask::key_lengths)
  std::vector<Index> labels;   // B: each expression's value 0..9
};

namespace detail {

// Examples first..first + count - 1; `what` names the caller in the errors.
inline std::vector<ListOpsExample> listops_examples(Index first, Index count,
                                                    const ListOpsOptions& options,
                                                    const std::string& what) {
  check_listops_options(options);
  require_argument(first >= 0, what + " first", ">= 0", first);
  require_argument(count >= 0, what + " count", ">= 0", count);
  checked_add(first, count, what + " first + count");
  std::vector<ListOpsExample> examples;
  examples.reserve(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i) examples.push_back(listops_example(first + i, options));
  return examples;
}

}  // namespace detail

// Examples first..first + count - 1 of the data set options.seed names (a training or test
// set held in memory).
inline std::vector<ListOpsExample> listops_examples(Index first, Index count,
                                                    const ListOpsOptions& options) {
  return detail::listops_examples(first, count, options, "listops_examples");
}

// The examples as one batch, in their order, padded at the end to a common length L:
// padded_length, or the longest example's length when it is 0 (a batch that DataOrder
// gathered from a fixed set: listops_batch(gather_first_axis(examples, indices))).
inline ListOpsBatch listops_batch(const std::vector<ListOpsExample>& examples,
                                  Index padded_length = 0) {
  Index longest = 0;
  for (const ListOpsExample& example : examples)
    longest = std::max(longest, static_cast<Index>(example.tokens.size()));
  detail::require_argument(
      padded_length == 0 || padded_length >= longest, "listops_batch padded_length",
      detail::concat("0 (the batch's longest) or >= the longest example (", longest, ")"),
      padded_length);
  const auto count = static_cast<Index>(examples.size());
  const Index length = padded_length > 0 ? padded_length : longest;
  ListOpsBatch batch;
  batch.tokens = Tensor<Index>({count, length});
  batch.keep = Tensor<std::uint8_t>({count, length});
  for (Index b = 0; b < count; ++b) {
    const ListOpsExample& example = examples[static_cast<std::size_t>(b)];
    const auto n = static_cast<Index>(example.tokens.size());
    std::copy(example.tokens.begin(), example.tokens.end(), batch.tokens.data() + b * length);
    std::fill(batch.keep.data() + b * length, batch.keep.data() + b * length + n, 1);
    batch.lengths.push_back(n);
    batch.labels.push_back(example.label);
  }
  return batch;
}

// Examples first..first + count - 1 as a batch. padded_length 0 pads to the batch's longest
// expression; otherwise it is L, at least options.max_length so that every example fits
// whatever the seed.
inline ListOpsBatch listops_batch(Index first, Index count, const ListOpsOptions& options,
                                  Index padded_length = 0) {
  check_listops_options(options);
  detail::require_argument(
      padded_length == 0 || padded_length >= options.max_length, "listops_batch padded_length",
      detail::concat("0 (the batch's longest) or >= ListOpsOptions::max_length (",
                     options.max_length, ")"),
      padded_length);
  return listops_batch(detail::listops_examples(first, count, options, "listops_batch"),
                       padded_length);
}

}  // namespace attnlens
