// The positional encoding of a stack of encoder layers (MATH.md section 3): one choice,
// PositionOptions, that is either absolute (sinusoidal, learned: AbsolutePosition adds a table to
// the stack's input) or relative (Shaw, Transformer-XL, T5, ALiBi, RoPE, and the 2-D quadratic
// and learned encodings of patch grids: RelativePosition attaches its own term to one layer's
// self-attention, so every layer has its own parameters).
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/absolute.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/sinusoidal.hpp"
#include "attnlens/position/t5.hpp"
#include "attnlens/position/transformer_xl.hpp"

namespace attnlens {

enum class PositionType {
  none,
  sinusoidal,  // absolute: Vaswani's interleaved table, added to the input
  learned,     // absolute: a max_len x E table, added to the input
  shaw,
  transformer_xl,
  t5,
  alibi,
  rope,
  quadratic,   // 2-D, patch grids only (needs PositionOptions::grid)
  learned_2d,  // 2-D, patch grids only
};

inline constexpr PositionType k_position_types[] = {
    PositionType::none,      PositionType::sinusoidal,     PositionType::learned,
    PositionType::shaw,      PositionType::transformer_xl, PositionType::t5,
    PositionType::alibi,     PositionType::rope,           PositionType::quadratic,
    PositionType::learned_2d};

inline const char* position_type_name(PositionType type) {
  switch (type) {
    case PositionType::none:
      return "none";
    case PositionType::sinusoidal:
      return "sinusoidal";
    case PositionType::learned:
      return "learned";
    case PositionType::shaw:
      return "shaw";
    case PositionType::transformer_xl:
      return "transformer_xl";
    case PositionType::t5:
      return "t5";
    case PositionType::alibi:
      return "alibi";
    case PositionType::rope:
      return "rope";
    case PositionType::quadratic:
      return "quadratic";
    case PositionType::learned_2d:
      return "learned_2d";
  }
  return "?";
}

inline PositionType position_type_from_name(const std::string& name,
                                            const std::string& what = "position.type") {
  std::string names;
  for (PositionType t : k_position_types) {
    if (name == position_type_name(t)) return t;
    names += detail::concat(names.empty() ? "\"" : ", \"", position_type_name(t), "\"");
  }
  throw ArgumentError(detail::concat(what, ": expected one of ", names, "; got \"", name, "\""));
}

inline bool is_absolute(PositionType type) {
  return type == PositionType::sinusoidal || type == PositionType::learned;
}
inline bool is_two_dimensional(PositionType type) {
  return type == PositionType::quadratic || type == PositionType::learned_2d;
}
inline bool is_relative(PositionType type) {
  return type != PositionType::none && !is_absolute(type);
}

inline const char* rope_pairing_name(RopePairing pairing) {
  return pairing == RopePairing::interleaved ? "interleaved" : "half";
}

// Every parameter of every type; each type reads only its own (the config reader rejects the
// others). Defaults are the papers'.
struct PositionOptions {
  PositionType type = PositionType::none;
  double base = 10000.0;                           // sinusoidal, rope
  Index max_len = 0;                               // learned: rows of the table (longest sequence)
  Index max_relative_position = 0;                 // shaw: k, offsets beyond +-k share the end rows
  Index num_buckets = 32;                          // t5
  Index max_distance = 128;                        // t5
  bool bidirectional = true;                       // t5: false for the causal buckets
  bool causal = false;                             // alibi: m_h (j - i) instead of -m_h |i - j|
  RopePairing pairing = RopePairing::interleaved;  // rope
  Index max_position = 0;  // learned_2d: offsets per axis; 0 = as many as the grid needs
  Index dim = 0;           // learned_2d: width of a table row; 0 = the head width
  Grid2d grid;             // quadratic, learned_2d: the token grid (VisionTransformer sets it)
};

// One layer's relative encoding. It owns its term and adds it to that layer's self-attention
// (score terms, value terms or query/key transforms); copies are deep, so that two layers or two
// models never share a table by accident.
template <class T>
class RelativePosition {
 public:
  using Term =
      std::variant<std::monostate, std::shared_ptr<ShawRelativePosition<T>>,
                   std::shared_ptr<TransformerXlRelativePosition<T>>,
                   std::shared_ptr<T5RelativeBias<T>>, std::shared_ptr<Alibi<T>>,
                   std::shared_ptr<RotaryEmbedding<T>>, std::shared_ptr<QuadraticEncoding<T>>,
                   std::shared_ptr<LearnedRelative2d<T>>>;

  RelativePosition() = default;

  // Zero parameters of the right shapes for a layer of `num_heads` heads of width d_model /
  // num_heads (ALiBi's slopes and RoPE's frequencies are fixed): load them or call
  // reset_parameters().
  RelativePosition(const PositionOptions& options, Index d_model, Index num_heads)
      : type_(options.type) {
    detail::require_argument(!is_absolute(options.type), "relative position type",
                             "a relative encoding (absolute ones are added to the input)",
                             position_type_name(options.type));
    detail::require_argument(
        d_model > 0 && num_heads > 0 && d_model % num_heads == 0, "relative position d_model",
        detail::concat("a positive multiple of num_heads ", num_heads), d_model);
    const Index H = num_heads, d = d_model / num_heads;
    switch (options.type) {
      case PositionType::shaw:
        term = std::make_shared<ShawRelativePosition<T>>(
            ShawOptions{d, options.max_relative_position});
        break;
      case PositionType::transformer_xl:
        term =
            std::make_shared<TransformerXlRelativePosition<T>>(TransformerXlOptions{H, d, d_model});
        break;
      case PositionType::t5:
        term = std::make_shared<T5RelativeBias<T>>(
            T5BiasOptions{H, options.num_buckets, options.max_distance, options.bidirectional});
        break;
      case PositionType::alibi:
        term = std::make_shared<Alibi<T>>(AlibiOptions{H, options.causal});
        break;
      case PositionType::rope:
        term = std::make_shared<RotaryEmbedding<T>>(RopeOptions{d, options.base, options.pairing});
        break;
      case PositionType::quadratic:
        term = std::make_shared<QuadraticEncoding<T>>(QuadraticEncodingOptions{H, options.grid});
        break;
      case PositionType::learned_2d: {
        const Index reach = std::max(options.grid.height, options.grid.width);
        term = std::make_shared<LearnedRelative2d<T>>(
            LearnedRelative2dOptions{H, options.max_position > 0 ? options.max_position : reach,
                                     options.dim > 0 ? options.dim : d, options.grid});
        break;
      }
      default:
        break;
    }
  }

  RelativePosition(const RelativePosition& other) : term(clone(other.term)), type_(other.type_) {}
  RelativePosition& operator=(const RelativePosition& other) {
    term = clone(other.term);
    type_ = other.type_;
    return *this;
  }
  RelativePosition(RelativePosition&&) = default;
  RelativePosition& operator=(RelativePosition&&) = default;

  PositionType type() const { return type_; }
  bool active() const { return term.index() != 0; }

  // The term as its class, e.g. as<T5RelativeBias<T>>(); throws ArgumentError naming both types
  // when it is another one.
  template <class U>
  U& as() const {
    const auto* p = std::get_if<std::shared_ptr<U>>(&term);
    detail::require_argument(p != nullptr, "RelativePosition::as", "the layer's own position type",
                             position_type_name(type_));
    return **p;
  }

  // Initialisation as each paper's code does it where the position header has none: T5's
  // table N(0, 1), Transformer-XL's u, v N(0, 0.02^2) and r_net like nn.Linear, the quadratic
  // encoding alpha = 1 and centres N(0, 1).
  void reset_parameters(Rng& rng) {
    std::visit(
        [&](auto& p) {
          using P = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<P, std::shared_ptr<ShawRelativePosition<T>>> ||
                        std::is_same_v<P, std::shared_ptr<LearnedRelative2d<T>>>) {
            p->reset_parameters(rng);
          } else if constexpr (std::is_same_v<P, std::shared_ptr<T5RelativeBias<T>>>) {
            init::normal(p->relative_attention_bias, rng);
          } else if constexpr (std::is_same_v<P,
                                              std::shared_ptr<TransformerXlRelativePosition<T>>>) {
            for (Matrix<T>* m : {&p->r_w_bias, &p->r_r_bias})
              for (Index i = 0; i < m->size(); ++i) m->data()[i] = rng.normal<T>(T(0), T(0.02));
            init::linear_uniform(p->r_net.weight, p->r_net.in_features(), rng);
          } else if constexpr (std::is_same_v<P, std::shared_ptr<QuadraticEncoding<T>>>) {
            p->alpha.setOnes();
            init::normal(p->center_shift, rng);
          }
        },
        term);
  }

  // The same encoding in `to`, a copy of `from`: the copy `to` holds of this encoding's term.
  RelativePosition copied_into(const MultiHeadAttention<T>& from,
                               const MultiHeadAttention<T>& to) const {
    RelativePosition copy;
    copy.type_ = type_;
    copy.term = std::visit(
        [&](const auto& p) -> Term {
          using P = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<P, std::monostate>) {
            return p;
          } else {
            const auto in = [&](const auto& original, const auto& copied) -> P {
              for (std::size_t i = 0; i < original.size(); ++i)
                if (original[i].get() == p.get())
                  return std::dynamic_pointer_cast<typename P::element_type>(copied[i]);
              return nullptr;
            };
            if constexpr (std::is_same_v<P, std::shared_ptr<RotaryEmbedding<T>>>)
              return in(from.query_key_transforms, to.query_key_transforms);
            else
              return in(from.score_terms, to.score_terms);
          }
        },
        term);
    return copy;
  }

  // Adds the term to mha's lists (Shaw to both score and value terms, RoPE to the query/key
  // transforms), or removes exactly this object from them.
  void attach(MultiHeadAttention<T>& mha) const { edit(mha, true); }
  void detach(MultiHeadAttention<T>& mha) const { edit(mha, false); }

  Term term;  // std::monostate for none

 private:
  static Term clone(const Term& term) {
    return std::visit(
        [](const auto& p) -> Term {
          using P = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<P, std::monostate>)
            return p;
          else
            return std::make_shared<typename P::element_type>(*p);
        },
        term);
  }

  template <class List, class Pointer>
  static void edit_list(List& list, const Pointer& p, bool add) {
    if (add) {
      list.push_back(p);
      return;
    }
    for (auto it = list.begin(); it != list.end();)
      it = it->get() == p.get() ? list.erase(it) : it + 1;
  }

  void edit(MultiHeadAttention<T>& mha, bool add) const {
    std::visit(
        [&](const auto& p) {
          using P = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<P, std::monostate>) {
            return;
          } else if constexpr (std::is_same_v<P, std::shared_ptr<RotaryEmbedding<T>>>) {
            edit_list(mha.query_key_transforms, p, add);
          } else {
            edit_list(mha.score_terms, p, add);
            if constexpr (std::is_same_v<P, std::shared_ptr<ShawRelativePosition<T>>>)
              edit_list(mha.value_terms, p, add);
          }
        },
        term);
  }

  PositionType type_ = PositionType::none;
};

// The absolute encoding of a stack, added to its input before the first layer.
template <class T>
class AbsolutePosition {
 public:
  AbsolutePosition() = default;

  // A zero learned table of max_len x d_model, or nothing to hold for sinusoidal: load it or
  // call reset_parameters().
  AbsolutePosition(const PositionOptions& options, Index d_model) : options_(options) {
    detail::require_argument(!is_relative(options.type), "absolute position type",
                             "none, sinusoidal or learned", position_type_name(options.type));
    if (options.type == PositionType::learned) {
      detail::require_argument(options.max_len > 0, "PositionOptions::max_len", "> 0",
                               options.max_len);
      weight = Matrix<T>::Zero(options.max_len, d_model);
    } else if (options.type == PositionType::sinusoidal) {
      detail::check_sinusoid_options(d_model, 2, options.base);
    }
  }

  PositionType type() const { return options_.type; }
  bool active() const { return options_.type != PositionType::none; }

  // nn.Embedding's initialisation, N(0, 1).
  void reset_parameters(Rng& rng) { init::normal(weight, rng); }

  // x (B x L x E or L x E) += rows 0 .. L-1 of the table.
  void add_to(Tensor<T>& x) const {
    if (options_.type == PositionType::learned) {
      add_absolute_positions<T>(x, weight);
    } else if (options_.type == PositionType::sinusoidal) {
      const Index rank = x.rank();
      detail::require_shape(rank == 2 || rank == 3, "src", "rank 3 [B, L, E] or rank 2 [L, E]",
                            detail::shape_string(x.shape()));
      add_absolute_positions<T>(
          x, sinusoidal_encoding<T>(x.dim(rank - 2), x.dim(rank - 1), options_.base));
    }
  }

  Matrix<T> weight;  // learned: max_len x E (nn.Embedding.weight); empty otherwise

 private:
  PositionOptions options_;
};

// A learned table is nn.Embedding-like: <prefix>weight.
template <class T, class F>
void for_each_parameter(AbsolutePosition<T>& position, const std::string& prefix, F&& f) {
  if (position.type() == PositionType::learned) f(prefix + "weight", position.weight);
}

}  // namespace attnlens
