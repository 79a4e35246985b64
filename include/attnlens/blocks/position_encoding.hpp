// The positional encoding of a stack of encoder layers (docs/math.md section 3): one choice,
// PositionOptions, of a registered encoding (position/registry.hpp) that is either absolute
// (AbsolutePosition adds a table to the stack's input) or relative (RelativePosition attaches
// its own factor to one layer's self-attention, so every layer has its own parameters).
#pragma once

#include <cstddef>
#include <memory>
#include <utility>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/position/absolute.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/registry.hpp"
#include "attnlens/position/sinusoidal.hpp"

namespace attnlens {

// One layer's relative encoding. It owns its factor and adds it to that layer's self-attention
// as what the factor is (a score term, a value term, a query/key transform, or several); copies
// are deep, so that two layers or two models never share a table by accident.
template <class T>
class RelativePosition {
 public:
  RelativePosition() = default;

  // The registered encoding's factor for a layer of `num_heads` heads of width d_model /
  // num_heads, with zero parameters of the right shapes (ALiBi's slopes and RoPE's frequencies
  // are fixed): load them or call reset_parameters().
  RelativePosition(const PositionOptions& options, Index d_model, Index num_heads)
      : type_(options.type) {
    const PositionEncoding& encoding = position_encoding(options.type);
    detail::require_argument(encoding.kind != PositionKind::absolute, "relative position type",
                             "a relative encoding (absolute ones are added to the input)",
                             position_type_name(options.type));
    detail::require_argument(
        d_model > 0 && num_heads > 0 && d_model % num_heads == 0, "relative position d_model",
        detail::concat("a positive multiple of num_heads ", num_heads), d_model);
    term = encoding.make<T>(options, d_model, num_heads);
  }

  // An encoding of `type` whose factor was made elsewhere (io::load_position_factor).
  RelativePosition(PositionType type, std::shared_ptr<KernelFactor<T>> factor)
      : term(std::move(factor)), type_(type) {}

  RelativePosition(const RelativePosition& other)
      : term(detail::copy_factor<T>(other.term)), type_(other.type_) {}
  RelativePosition& operator=(const RelativePosition& other) {
    term = detail::copy_factor<T>(other.term);
    type_ = other.type_;
    return *this;
  }
  RelativePosition(RelativePosition&&) = default;
  RelativePosition& operator=(RelativePosition&&) = default;

  PositionType type() const { return type_; }
  bool active() const { return term != nullptr; }

  // The factor as its class, e.g. as<T5RelativeBias<T>>(); throws ArgumentError naming the
  // layer's type when it is another one.
  template <class U>
  U& as() const {
    U* p = dynamic_cast<U*>(term.get());
    detail::require_argument(p != nullptr, "RelativePosition::as", "the layer's own position type",
                             position_type_name(type_));
    return *p;
  }

  // The factor's own initialisation (KernelFactor::reset_parameters).
  void reset_parameters(Rng& rng) {
    if (term) term->reset_parameters(rng);
  }

  // Adds the factor to each of mha's lists it belongs to, or removes exactly this object.
  void attach(MultiHeadAttention<T>& mha) const { edit(mha, true); }
  void detach(MultiHeadAttention<T>& mha) const { edit(mha, false); }

  // The same encoding in `to`, a copy of `from`: the copy `to` holds of this encoding's factor.
  RelativePosition copied_into(const MultiHeadAttention<T>& from,
                               const MultiHeadAttention<T>& to) const {
    RelativePosition copy;
    copy.type_ = type_;
    const auto find = [&](const auto& original, const auto& copied) {
      for (std::size_t i = 0; i < original.size() && !copy.term; ++i)
        if (dynamic_cast<const KernelFactor<T>*>(original[i].get()) == term.get())
          copy.term = std::dynamic_pointer_cast<KernelFactor<T>>(copied[i]);
    };
    find(from.score_terms, to.score_terms);
    find(from.query_key_transforms, to.query_key_transforms);
    find(from.value_terms, to.value_terms);
    if (!copy.term) copy.term = detail::copy_factor<T>(term);  // not attached to `from`
    return copy;
  }

  std::shared_ptr<KernelFactor<T>> term;  // null for none

 private:
  template <class Factor>
  static void edit_list(std::vector<std::shared_ptr<Factor>>& list,
                        const std::shared_ptr<KernelFactor<T>>& term, bool add) {
    const auto factor = std::dynamic_pointer_cast<Factor>(term);
    if (!factor) return;
    if (add) {
      list.push_back(factor);
      return;
    }
    for (auto it = list.begin(); it != list.end();)
      it = it->get() == factor.get() ? list.erase(it) : it + 1;
  }

  void edit(MultiHeadAttention<T>& mha, bool add) const {
    edit_list(mha.score_terms, term, add);
    edit_list(mha.value_terms, term, add);
    edit_list(mha.query_key_transforms, term, add);
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

  // The backward of add_to: x = src + table rows, so dL/dsrc = dL/dx and a learned table's
  // rows 0 .. L-1 in `gradient` (a position like this one) += dL/dx summed over the batch.
  void add_gradient(const Tensor<T>& dx, AbsolutePosition& gradient) const {
    if (options_.type != PositionType::learned) return;
    const Index E = dx.shape().back(), L = dx.dim(dx.rank() - 2), B = dx.size() / (L * E);
    detail::require_matrix(gradient.weight, weight.rows(), weight.cols(),
                           "AbsolutePosition gradient weight");
    for (Index b = 0; b < B; ++b)
      gradient.weight.topRows(L) += ConstMatrixMap<T>(dx.data() + b * L * E, L, E);
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
