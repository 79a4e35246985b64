// The registry of position encodings (docs/math.md section 3): one entry per encoding with its
// name, kind, settings, parameter count and factory. config.json (io/model.hpp), the command line
// (attnlens mha --position) and the stacks (blocks/position_encoding.hpp) all read it, so an
// encoding added here is reachable from each of them (docs/architecture.md).
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/compiled.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/cauchy.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/t5.hpp"
#include "attnlens/position/transformer_xl.hpp"

namespace attnlens {

namespace detail {

inline Index head_width(Index d_model, Index heads) { return heads > 0 ? d_model / heads : 0; }

inline PositionSetting rope_pairing_setting() {
  PositionSetting s{"pairing", "which coordinates rotate together: interleaved or half", false,
                    [](const PositionOptions& o) {
                      return SettingValue(std::string(name_of(k_rope_pairing_names, o.pairing)));
                    },
                    [](PositionOptions& o, const SettingValue& v) {
                      o.pairing =
                          value_named(k_rope_pairing_names, std::get<std::string>(v), "pairing");
                    }};
  for (const auto& entry : k_rope_pairing_names) s.choices.push_back(entry.name);
  return s;
}

// An entry without settings, parameters or factor: the fields are set one by one below.
inline PositionEncoding position_entry(PositionType type, PositionKind kind, const char* summary) {
  PositionEncoding entry;
  entry.type = type;
  entry.kind = kind;
  entry.summary = summary;
  return entry;
}

#if !ATTNLENS_HEADER_DEFINITIONS
// Defined in src/compiled.cpp: making the entries instantiates every encoding for float and
// double, a few seconds of compile time that attnlens::compiled spends once.
std::vector<PositionEncoding> builtin_position_encodings();
#else
ATTNLENS_COMPILED_INLINE std::vector<PositionEncoding> builtin_position_encodings() {
  std::vector<PositionEncoding> all;
  all.push_back(position_entry(PositionType::none, PositionKind::none, "no position encoding"));

  auto sinusoidal = position_entry(PositionType::sinusoidal, PositionKind::absolute,
                                   "Vaswani et al. 2017: a sinusoidal table added to the input");
  sinusoidal.settings = {setting("base", "wavelength base (> 1)", &PositionOptions::base)};
  all.push_back(sinusoidal);

  auto learned = position_entry(PositionType::learned, PositionKind::absolute,
                                "a learned max_len x d_model table added to the input");
  learned.settings = {setting("max_len", "rows of the table: the longest sequence",
                              &PositionOptions::max_len, true)};
  learned.parameters = [](const PositionOptions& o, Index d_model, Index, const std::string&) {
    return std::vector<ParameterShape>{{"weight", {std::max<Index>(o.max_len, 0), d_model}}};
  };
  all.push_back(learned);

  auto shaw = position_entry(PositionType::shaw, PositionKind::relative,
                             "Shaw et al. 2018: clipped relative key and value tables");
  shaw.settings = {setting("max_relative_position", "k: offsets beyond +-k share the end rows",
                           &PositionOptions::max_relative_position, true)};
  shaw.parameters = [](const PositionOptions& o, Index d_model, Index heads,
                       const std::string& where) {
    const Index rows = checked_side<IoError>(std::max<Index>(o.max_relative_position, 0),
                                             where + ": position: max_relative_position");
    const Index d = head_width(d_model, heads);
    return std::vector<ParameterShape>{{"relative_keys", {rows, d}},
                                       {"relative_values", {rows, d}}};
  };
  set_factory(shaw, [](auto t, const PositionOptions& o, Index d_model, Index heads) {
    return std::make_shared<ShawRelativePosition<decltype(t)> >(
        ShawOptions{head_width(d_model, heads), o.max_relative_position});
  });
  all.push_back(shaw);

  auto xl = position_entry(PositionType::transformer_xl, PositionKind::relative,
                           "Dai et al. 2019: sinusoidal relative embeddings through r_net, u, v");
  xl.parameters = [](const PositionOptions&, Index d_model, Index heads, const std::string&) {
    const Index d = head_width(d_model, heads);
    return std::vector<ParameterShape>{
        {"r_w_bias", {heads, d}}, {"r_r_bias", {heads, d}}, {"r_net.weight", {heads * d, d_model}}};
  };
  set_factory(xl, [](auto t, const PositionOptions&, Index d_model, Index heads) {
    return std::make_shared<TransformerXlRelativePosition<decltype(t)> >(
        TransformerXlOptions{heads, head_width(d_model, heads), d_model});
  });
  all.push_back(xl);

  auto t5 = position_entry(PositionType::t5, PositionKind::relative,
                           "Raffel et al. 2020: a learned bias per head and bucket of j - i");
  t5.settings = {
      setting("num_buckets", "buckets of the table", &PositionOptions::num_buckets),
      setting("max_distance", "distance of the last bucket", &PositionOptions::max_distance),
      setting("bidirectional", "false: the causal buckets, one per distance back",
              &PositionOptions::bidirectional)};
  t5.parameters = [](const PositionOptions& o, Index, Index heads, const std::string&) {
    return std::vector<ParameterShape>{
        {"relative_attention_bias.weight", {std::max<Index>(o.num_buckets, 0), heads}}};
  };
  t5.aliases = {{"t5-causal", {"bidirectional", false}}};
  set_factory(t5, [](auto t, const PositionOptions& o, Index, Index heads) {
    return std::make_shared<T5RelativeBias<decltype(t)> >(
        T5BiasOptions{heads, o.num_buckets, o.max_distance, o.bidirectional});
  });
  all.push_back(t5);

  auto alibi = position_entry(PositionType::alibi, PositionKind::relative,
                              "Press et al. 2022: a fixed slope per head times the distance");
  alibi.settings = {
      setting("causal", "m_h (j - i) instead of -m_h |i - j|", &PositionOptions::causal)};
  alibi.aliases = {{"alibi-causal", {"causal", true}}};
  set_factory(alibi, [](auto t, const PositionOptions& o, Index, Index heads) {
    return std::make_shared<Alibi<decltype(t)> >(AlibiOptions{heads, o.causal});
  });
  all.push_back(alibi);

  auto rope = position_entry(PositionType::rope, PositionKind::relative,
                             "Su et al. 2021: queries and keys rotated by their positions");
  rope.settings = {setting("base", "wavelength base", &PositionOptions::base),
                   rope_pairing_setting()};
  rope.aliases = {{"rope-half", {"pairing", std::string("half")}}};
  set_factory(rope, [](auto t, const PositionOptions& o, Index d_model, Index heads) {
    return std::make_shared<RotaryEmbedding<decltype(t)> >(
        RopeOptions{head_width(d_model, heads), o.base, o.pairing});
  });
  all.push_back(rope);

  auto cauchy = position_entry(PositionType("cauchy"), PositionKind::relative,
                               "a Cauchy distance kernel -log(1 + (i - j)^2 / s_h^2)");
  const PositionSetting width =
      extra_setting("width", "s_h of every head at the start", CauchyOptions{}.width);
  cauchy.settings = {width};
  cauchy.parameters = [](const PositionOptions&, Index, Index heads, const std::string&) {
    return std::vector<ParameterShape>{{"width", {heads}}};
  };
  set_factory(cauchy, [width](auto t, const PositionOptions& o, Index, Index heads) {
    return std::make_shared<CauchyDistance<decltype(t)> >(
        CauchyOptions{heads, std::get<double>(width.get(o))});
  });
  all.push_back(cauchy);

  auto quadratic = position_entry(PositionType::quadratic, PositionKind::grid,
                                  "Cordonnier et al. 2020: a Gaussian bump per head");
  PositionSetting quadratic_init = extra_setting(
      "init",
      "the initialisation: unit (alpha 1, centres N(0, 1)) or attention-cnn (centres N(0, 4), "
      "alpha = s^2 / 2 with s ~ N(1, 0.01^2))",
      std::string(name_of(k_quadratic_init_names, QuadraticInit::unit)));
  for (const auto& entry : k_quadratic_init_names) quadratic_init.choices.push_back(entry.name);
  quadratic.settings = {quadratic_init};
  quadratic.parameters = [](const PositionOptions&, Index, Index heads, const std::string&) {
    return std::vector<ParameterShape>{{"alpha", {heads}}, {"center_shift", {heads, 2}}};
  };
  set_factory(quadratic, [quadratic_init](auto t, const PositionOptions& o, Index, Index heads) {
    QuadraticEncodingOptions options{heads, o.grid};
    options.init = value_named(k_quadratic_init_names,
                               std::get<std::string>(quadratic_init.get(o)), "quadratic init");
    return std::make_shared<QuadraticEncoding<decltype(t)> >(options);
  });
  all.push_back(quadratic);

  auto learned_2d = position_entry(PositionType::learned_2d, PositionKind::grid,
                                   "Bello et al. 2019: learned row and column offset tables");
  learned_2d.settings = {
      setting("max_position", "offsets per axis; 0: as the grid needs",
              &PositionOptions::max_position),
      setting("dim", "width of a table row; 0: the head width", &PositionOptions::dim)};
  learned_2d.parameters = [](const PositionOptions& o, Index d_model, Index heads,
                             const std::string& where) {
    const Index max_position =
        o.max_position > 0 ? o.max_position : std::max(o.grid.height, o.grid.width);
    const Index offsets = checked_side<IoError>(  // 2 max_position - 1 rows per table
        std::max<Index>(max_position - 1, 0), where + ": position: max_position");
    const Index dim = o.dim > 0 ? o.dim : head_width(d_model, heads);
    return std::vector<ParameterShape>{{"row_embeddings.weight", {offsets, dim}},
                                       {"col_embeddings.weight", {offsets, dim}},
                                       {"head_keys_row.weight", {heads, dim}},
                                       {"head_keys_col.weight", {heads, dim}}};
  };
  set_factory(learned_2d, [](auto t, const PositionOptions& o, Index d_model, Index heads) {
    const Index reach = std::max(o.grid.height, o.grid.width);
    return std::make_shared<LearnedRelative2d<decltype(t)> >(
        LearnedRelative2dOptions{heads, o.max_position > 0 ? o.max_position : reach,
                                 o.dim > 0 ? o.dim : head_width(d_model, heads), o.grid});
  });
  all.push_back(learned_2d);
  return all;
}
#endif

}  // namespace detail

// Every registered encoding, in the order the docs list them.
inline const std::vector<PositionEncoding>& position_encodings() {
  static const std::vector<PositionEncoding> all = detail::builtin_position_encodings();
  return all;
}

// The names of the registered encodings, iterable: for (PositionType t : k_position_types).
struct PositionTypes {
  struct Iterator {
    std::vector<PositionEncoding>::const_iterator at;
    PositionType operator*() const { return at->type; }
    Iterator& operator++() { return ++at, *this; }
    bool operator!=(const Iterator& other) const { return at != other.at; }
  };
  Iterator begin() const { return {position_encodings().begin()}; }
  Iterator end() const { return {position_encodings().end()}; }
};
inline constexpr PositionTypes k_position_types{};

inline const char* position_type_name(PositionType type) { return type.name(); }

// "a", "b", ...: the names of the registered encodings that `take` accepts, for messages.
template <class Take>
std::string quoted_position_names(Take&& take) {
  std::string names;
  for (const auto& entry : position_encodings())
    if (take(entry))
      names += detail::concat(names.empty() ? "\"" : ", \"", entry.type.name(), "\"");
  return names;
}

// The entry of `type`; throws ArgumentError naming `what` and listing the registered names.
inline const PositionEncoding& position_encoding(PositionType type,
                                                 const std::string& what = "position.type") {
  for (const auto& entry : position_encodings())
    if (entry.type == type) return entry;
  throw ArgumentError(detail::concat(what, ": expected one of ",
                                     quoted_position_names([](const auto&) { return true; }),
                                     "; got '", type.name(), "'"));
}

// The registered type named `name` (whose name outlives `name`); throws as position_encoding.
inline PositionType position_type_from_name(const std::string& name,
                                            const std::string& what = "position.type") {
  return position_encoding(PositionType(name.c_str()), what).type;
}

inline PositionKind position_kind(PositionType type) { return position_encoding(type).kind; }
inline bool is_absolute(PositionType type) { return position_kind(type) == PositionKind::absolute; }
inline bool is_two_dimensional(PositionType type) {
  return position_kind(type) == PositionKind::grid;
}
inline bool is_relative(PositionType type) {
  const PositionKind kind = position_kind(type);
  return kind == PositionKind::relative || kind == PositionKind::grid;
}

}  // namespace attnlens
