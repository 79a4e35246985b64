// Attention maps over a ViT's patch grid: the query token a map is drawn for (the CLS token, a
// token index or a patch by row and column), and that token's attention row of every layer and
// head (or of a rollout, interpret/attention_rollout.hpp) reshaped to the grid, the columns of
// the tokens before the grid (CLS) left out (docs/interpretability.md).
#pragma once

#include <string>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct AttentionQuery {
  enum class Kind { cls, token, patch };
  Kind kind = Kind::cls;
  Index token = 0;         // Kind::token: the token's index (CLS first)
  Index row = 0, col = 0;  // Kind::patch: the patch's place on the grid

  static AttentionQuery cls_token() { return {}; }
  static AttentionQuery token_index(Index token) { return {Kind::token, token, 0, 0}; }
  static AttentionQuery patch(Index row, Index col) { return {Kind::patch, 0, row, col}; }
};

namespace detail {

// `text` as a non-negative decimal integer, or -1.
inline Index parse_query_number(const std::string& text) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(text);
}

}  // namespace detail

// "cls", a token index ("5") or a patch's "ROW,COL" ("3,4"); throws ArgumentError naming `what`
// (the option it came from) otherwise.
inline AttentionQuery parse_attention_query(const std::string& text,
                                            const std::string& what = "query") {
  if (text == "cls") return AttentionQuery::cls_token();
  const std::size_t comma = text.find(',');
  if (comma == std::string::npos) {
    const Index token = detail::parse_query_number(text);
    if (token >= 0) return AttentionQuery::token_index(token);
  } else {
    const Index row = detail::parse_query_number(text.substr(0, comma));
    const Index col = detail::parse_query_number(text.substr(comma + 1));
    if (row >= 0 && col >= 0) return AttentionQuery::patch(row, col);
  }
  throw ArgumentError(detail::concat(what, ": expected cls, a token index or ROW,COL, got '", text,
                                     "'"));
}

// A ViT's patch grid: (image_height / patch_size) x (image_width / patch_size) after the CLS
// token, if it has one.
inline Grid2d vit_patch_grid(const VisionTransformerOptions& options) {
  return Grid2d{options.image_height / options.patch_size,
                options.image_width / options.patch_size, options.class_token ? 1 : 0};
}

// The token `query` names on `grid`; throws ArgumentError naming `what` when there is no such
// token: cls on a grid without a leading token, an index past the last token, a row or column
// off the grid.
inline Index query_token(const AttentionQuery& query, const Grid2d& grid,
                         const std::string& what = "query") {
  switch (query.kind) {
    case AttentionQuery::Kind::cls:
      detail::require_argument(grid.leading > 0, what,
                               "a token index or ROW,COL (the model has no CLS token)", "cls");
      return 0;
    case AttentionQuery::Kind::token:
      detail::require_argument(query.token >= 0 && query.token < grid.tokens(), what,
                               detail::concat("a token index in 0..", grid.tokens() - 1, " (",
                                              grid.leading, " + ", grid.height, " x ", grid.width,
                                              " tokens)"),
                               query.token);
      return query.token;
    case AttentionQuery::Kind::patch:
      detail::require_argument(
          query.row >= 0 && query.row < grid.height && query.col >= 0 && query.col < grid.width,
          what,
          detail::concat("ROW,COL on the ", grid.height, " x ", grid.width,
                         " patch grid (0..", grid.height - 1, ",0..", grid.width - 1, ")"),
          detail::concat(query.row, ",", query.col));
      return grid.leading + query.row * grid.width + query.col;
  }
  return 0;
}

// Row `token` of an L x L attention map (L = grid.tokens()) over the grid's tokens, as a
// grid.height x grid.width matrix.
template <class Derived>
Matrix<typename Derived::Scalar> grid_attention_row(const Eigen::MatrixBase<Derived>& map,
                                                    Index token, const Grid2d& grid) {
  detail::require_shape(map.rows() == grid.tokens() && map.cols() == grid.tokens(),
                        "attention map", detail::concat(grid.tokens(), " x ", grid.tokens()),
                        detail::concat(map.rows(), " x ", map.cols()));
  detail::require_argument(token >= 0 && token < grid.tokens(), "attention map query token",
                           detail::concat("0..", grid.tokens() - 1), token);
  Matrix<typename Derived::Scalar> out(grid.height, grid.width);
  for (Index r = 0; r < grid.height; ++r)
    out.row(r) = map.row(token).segment(grid.leading + r * grid.width, grid.width);
  return out;
}

// The query token's attention over the patch grid in every layer and head of image `batch`:
// weights[l] is layer l's B x H x L x L (a ViT forward with per_head weights); out[l][h] is a
// grid.height x grid.width matrix.
template <class T>
std::vector<std::vector<Matrix<T>>> patch_attention_maps(const std::vector<Tensor<T>>& weights,
                                                         const Grid2d& grid, Index token,
                                                         Index batch = 0) {
  std::vector<std::vector<Matrix<T>>> maps(weights.size());
  for (std::size_t l = 0; l < weights.size(); ++l) {
    const Tensor<T>& w = weights[l];
    detail::require_shape(w.rank() == 4 && batch >= 0 && batch < w.dim(0),
                          detail::concat("attention weights[", l, "]"),
                          detail::concat("[B, H, L, L] with B > ", batch),
                          detail::shape_string(w.shape()));
    for (Index h = 0; h < w.dim(1); ++h)
      maps[l].push_back(grid_attention_row(w.matrix({batch, h}), token, grid));
  }
  return maps;
}

}  // namespace attnlens
