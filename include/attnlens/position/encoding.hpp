// How a position encoding describes itself to the registry (position/registry.hpp): its name,
// where it acts (added to the input, or a factor of each layer's attention, on a sequence or a
// patch grid), its settings as config.json and the command line spell them, the parameters it
// holds, and a factory for one layer's factor. PositionOptions carries the settings of a choice.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/t5.hpp"

namespace attnlens {

// The name of a registered encoding (position_type_from_name finds one). The built-in ones
// have constants; an encoding added to the registry is named by its entry.
class PositionType {
 public:
  constexpr PositionType() = default;
  constexpr explicit PositionType(const char* name) : name_(name) {}
  constexpr const char* name() const { return name_; }
  friend bool operator==(PositionType a, PositionType b) {
    return std::strcmp(a.name_, b.name_) == 0;
  }
  friend bool operator!=(PositionType a, PositionType b) { return !(a == b); }

  static const PositionType none, sinusoidal, learned, shaw, transformer_xl, t5, alibi, rope,
      quadratic, learned_2d;

 private:
  const char* name_ = "none";
};

inline constexpr PositionType PositionType::none{"none"};
inline constexpr PositionType PositionType::sinusoidal{"sinusoidal"};  // Vaswani's, on the input
inline constexpr PositionType PositionType::learned{"learned"};        // a max_len x E input table
inline constexpr PositionType PositionType::shaw{"shaw"};
inline constexpr PositionType PositionType::transformer_xl{"transformer_xl"};
inline constexpr PositionType PositionType::t5{"t5"};
inline constexpr PositionType PositionType::alibi{"alibi"};
inline constexpr PositionType PositionType::rope{"rope"};
inline constexpr PositionType PositionType::quadratic{"quadratic"};    // 2-D, patch grids only
inline constexpr PositionType PositionType::learned_2d{"learned_2d"};  // 2-D, patch grids only

// A setting's value: an integer, a number, a flag or a string (one of its choices).
using SettingValue = std::variant<Index, double, bool, std::string>;

// The settings of one choice of encoding; each encoding reads only its own (the config reader
// rejects the others). The defaults are those of the encodings' own options structs.
struct PositionOptions {
  PositionType type = PositionType::none;
  double base = RopeOptions{}.base;  // sinusoidal, rope
  Index max_len = 0;                 // learned: rows of the table (longest sequence)
  Index max_relative_position = ShawOptions{}.max_relative_position;  // shaw: k
  Index num_buckets = T5BiasOptions{}.num_buckets;                    // t5
  Index max_distance = T5BiasOptions{}.max_distance;                  // t5
  bool bidirectional = T5BiasOptions{}.bidirectional;                 // t5
  bool causal = AlibiOptions{}.causal;                                // alibi
  RopePairing pairing = RopeOptions{}.pairing;                        // rope
  Index max_position = 0;  // learned_2d: offsets per axis; 0 = as many as the grid needs
  Index dim = 0;           // learned_2d: width of a table row; 0 = the head width
  Grid2d grid;             // 2-D encodings: the token grid (VisionTransformer sets it)
  // Settings of registered encodings that have no field above, by their config.json key.
  std::map<std::string, SettingValue> extra;
};

// Where an encoding acts.
enum class PositionKind {
  none,
  absolute,  // added to the stack's input (AbsolutePosition)
  relative,  // a factor of every layer's self-attention, on a sequence
  grid,      // a factor of every layer's self-attention, on PositionOptions::grid
};

// One setting: its config.json key (the command line's --position-option KEY=VALUE), what it
// means, whether config.json must give it, and how it is read from and written to the options.
// Values are integers, numbers, flags or one of `choices`.

struct PositionSetting {
  const char* key;
  const char* help;
  bool required = false;
  std::function<SettingValue(const PositionOptions&)> get;
  std::function<void(PositionOptions&, const SettingValue&)> set;
  std::vector<std::string> choices = {};  // a string setting's values
};

// A setting held in a field of PositionOptions.
template <class V>
PositionSetting setting(const char* key, const char* help, V PositionOptions::*field,
                        bool required = false) {
  return {key, help, required, [field](const PositionOptions& o) { return SettingValue(o.*field); },
          [field](PositionOptions& o, const SettingValue& v) { o.*field = std::get<V>(v); }};
}

// A setting held in PositionOptions::extra, `fallback` (which sets its type) when absent.
template <class V>
PositionSetting extra_setting(const char* key, const char* help, V fallback) {
  return {key, help, false,
          [key, fallback](const PositionOptions& o) {
            const auto it = o.extra.find(key);
            return it == o.extra.end() ? SettingValue(fallback) : it->second;
          },
          [key](PositionOptions& o, const SettingValue& v) {
            o.extra[key] = SettingValue(std::get<V>(v));
          }};
}

struct ParameterShape {
  std::string name;
  Shape shape;
};

template <class T>
using FactorFactory = std::function<std::shared_ptr<KernelFactor<T>>(
    const PositionOptions& options, Index d_model, Index num_heads)>;

struct PositionEncoding {
  PositionType type;
  PositionKind kind = PositionKind::relative;
  const char* summary = "";  // one line: what it is, its source
  std::vector<PositionSetting> settings;
  // The parameters one layer's factor (relative, grid) or the stack's table (absolute) holds
  // for these options, by their state_dict names, with sizes in checked arithmetic throwing
  // IoError naming `where`; options out of their domain give what the factory would need
  // before it names them. Readers check a file against them before anything is allocated.
  // Empty: the encoding holds no parameters.
  std::function<std::vector<ParameterShape>(const PositionOptions&, Index d_model, Index num_heads,
                                            const std::string& where)>
      parameters;
  // One layer's factor with zero (or fixed) parameters; null for the absolute kinds.
  FactorFactory<float> make_float;
  FactorFactory<double> make_double;
  // Names the command line accepts for this encoding with one setting preset
  // (alibi-causal: causal = true).
  std::vector<std::pair<std::string, std::pair<const char*, SettingValue>>> aliases = {};

  template <class T>
  std::shared_ptr<KernelFactor<T>> make(const PositionOptions& options, Index d_model,
                                        Index num_heads) const {
    if constexpr (std::is_same_v<T, float>)
      return make_float ? make_float(options, d_model, num_heads) : nullptr;
    else
      return make_double ? make_double(options, d_model, num_heads) : nullptr;
  }
};

// Fills both factories of `entry` from one generic maker, make(T{}, options, d_model, heads).
template <class Make>
void set_factory(PositionEncoding& entry, Make make) {
  entry.make_float = [make](const PositionOptions& o, Index d_model, Index heads) {
    return std::shared_ptr<KernelFactor<float>>(make(float{}, o, d_model, heads));
  };
  entry.make_double = [make](const PositionOptions& o, Index d_model, Index heads) {
    return std::shared_ptr<KernelFactor<double>>(make(double{}, o, d_model, heads));
  };
}

// The values of the encoding's tables: its rank-2 parameters other than biases (0 without
// parameters), in checked arithmetic throwing IoError naming `where`. Readers hold this lower
// bound against a file's size before they allocate anything; the vectors and per-head biases
// it leaves out are O(heads x head width), so a file that lacks them is caught when its
// tensors are read, before any table of that size could matter.
inline Index table_parameter_count(const PositionEncoding& encoding, const PositionOptions& options,
                                   Index d_model, Index num_heads, const std::string& where) {
  if (!encoding.parameters) return 0;
  const auto is_bias = [](const std::string& name) {
    return name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
  };
  Index count = 0;
  for (const ParameterShape& p : encoding.parameters(options, d_model, num_heads, where)) {
    if (p.shape.size() < 2 || is_bias(p.name)) continue;
    count = detail::checked_add<IoError>(
        count, detail::checked_product<IoError>(p.shape, where + ": position: " + p.name),
        where + ": the parameter count");
  }
  return count;
}

}  // namespace attnlens
