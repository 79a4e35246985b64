// The attnlens model format (docs/model-format.md): a directory with config.json (the
// constructor arguments of torch.nn.TransformerEncoder plus attnlens's position, attention and
// residual choices) and model.safetensors (the encoder's state_dict, PyTorch names).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "attnlens/attention/variant.hpp"
#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "attnlens/io/json_text.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/registry.hpp"

namespace attnlens::io {

inline constexpr const char* k_config_file = "config.json";
inline constexpr const char* k_weights_file = "model.safetensors";
inline constexpr const char* k_model_type = "transformer_encoder";

namespace detail {

using attnlens::detail::concat;

// config.json's objects nest two deep (the position, attention and residual objects), with a
// lambda array inside; deeper text is rejected before it is parsed into a tree.
inline constexpr int k_max_config_levels = 8;

// Reads config.json's keys with their types checked; every error names the key and the file.
class ConfigReader {
 public:
  ConfigReader(nlohmann::json object, std::string where)
      : object_(std::move(object)), where_(std::move(where)) {
    if (!object_.is_object()) fail("", "a JSON object", object_.type_name());
  }

  bool has(const std::string& key) const { return object_.contains(key); }

  template <class V>
  V get(const std::string& key, const V& fallback) const {
    return has(key) ? get<V>(key) : fallback;
  }

  template <class V>
  V get(const std::string& key) const {
    if (!has(key)) throw IoError(concat(where_, ": missing key '", key, "'"));
    const nlohmann::json& value = object_.at(key);
    used_.insert(key);
    if constexpr (std::is_same_v<V, bool>) {
      if (!value.is_boolean()) fail(key, "true or false", value.dump());
      return value.get<bool>();
    } else if constexpr (std::is_integral_v<V>) {
      if (!value.is_number_integer()) fail(key, "an integer", value.dump());
      // JSON integers above the signed range are parsed as unsigned; get<V> would wrap them.
      if (value.is_number_unsigned() &&
          value.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<V>::max()))
        fail(key, concat("an integer <= ", std::numeric_limits<V>::max()), value.dump());
      return value.get<V>();
    } else if constexpr (std::is_floating_point_v<V>) {
      if (!value.is_number()) fail(key, "a number", value.dump());
      return value.get<V>();
    } else if constexpr (std::is_same_v<V, std::string>) {
      if (!value.is_string()) fail(key, "a string", value.dump());
      return value.get<std::string>();
    } else {
      static_assert(std::is_same_v<V, nlohmann::json>);
      return value;
    }
  }

  // A nested object ("position", "attention", "residual"), or {"type": fallback_type}.
  ConfigReader object(const std::string& key, const std::string& fallback_type) const {
    if (!has(key)) return ConfigReader({{"type", fallback_type}}, where_ + ": " + key);
    const nlohmann::json& value = get<nlohmann::json>(key);
    if (!value.is_object()) fail(key, "an object such as {\"type\": ...}", value.dump());
    return ConfigReader(value, where_ + ": " + key);
  }

  // Throws naming every key that no get() asked for.
  void reject_unknown_keys() const {
    std::vector<std::string> unknown;
    for (const auto& item : object_.items())
      if (!used_.count(item.key())) unknown.push_back("'" + item.key() + "'");
    if (unknown.empty()) return;
    std::string list;
    for (const auto& name : unknown) list += (list.empty() ? "" : ", ") + name;
    throw IoError(concat(where_, ": unknown key", unknown.size() > 1 ? "s " : " ", list));
  }

  [[noreturn]] void fail(const std::string& key, const std::string& expected,
                         const std::string& actual) const {
    throw IoError(
        concat(where_, key.empty() ? "" : ": ", key, ": expected ", expected, ", got ", actual));
  }

 private:
  nlohmann::json object_;
  std::string where_;
  mutable std::set<std::string> used_;
};

// A config.json is a few hundred bytes; the limit keeps a device or a huge file from being read
// whole.
inline constexpr std::size_t k_max_config_bytes = 1 << 20;

inline std::string read_text_file(const std::string& path, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(concat("cannot open '", path, "'"));
  std::string text(max_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) throw IoError(concat("cannot read '", path, "'"));
  if (static_cast<std::size_t>(in.gcount()) > max_bytes)
    throw IoError(concat(path, ": larger than the limit of ", max_bytes, " bytes"));
  text.resize(static_cast<std::size_t>(in.gcount()));
  return text;
}

inline std::string quoted_list(const std::vector<std::string>& names, std::size_t shown = 5) {
  std::string list;
  for (std::size_t i = 0; i < names.size() && i < shown; ++i)
    list += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > shown) list += concat(" and ", names.size() - shown, " more");
  return list;
}

}  // namespace detail

// The options an encoder model's config.json describes: the encoder with its position, its
// residual and every layer's attention variant (encoder.layer.attention).
struct EncoderModelConfig {
  EncoderOptions encoder;
};

namespace detail {

// The attention types config.json names: the variants, and twicing (softmax with boost 1).
inline constexpr const char* k_attention_type_names =
    "\"softmax\", \"twicing\", \"bilateral\", \"kde\", \"robust_kde\", \"fourier\", "
    "\"elliptical\", \"neutreno\"";

// "attention": {"type": ..., "boost": k, the type's parameters, "content": flag}
// (docs/model-format.md). "content" (default true; false: positional-only attention,
// EncoderLayerOptions::content) is read into *content; without `content` it is an unknown key.
inline AttentionVariantOptions parse_attention_config(const ConfigReader& reader,
                                                      bool* content = nullptr) {
  AttentionVariantOptions out;
  const auto type = reader.get<std::string>("type");
  const auto positive = [&](const char* key, double value) {
    if (!(value > 0)) reader.fail(key, "a number > 0", concat(value));
    return value;
  };
  if (type == "twicing") {
    out.boost = 1;
  } else {
    try {
      out.type = attention_variant_from_name(type);
    } catch (const ArgumentError&) {
      reader.fail("type", concat("one of ", k_attention_type_names), "\"" + type + "\"");
    }
    out.boost = reader.get<Index>("boost", 0);
    if (out.boost < 0) reader.fail("boost", "an integer >= 0", concat(out.boost));
    if (out.boost > k_max_boost)
      reader.fail("boost", concat("an integer <= ", k_max_boost, " (k_max_boost)"),
                  concat(out.boost));
  }
  switch (out.type) {
    case AttentionVariantType::bilateral: {
      const auto kernel = reader.get<std::string>("kernel", "gaussian");
      try {
        out.domain.type = distance_kernel_from_name(kernel);
      } catch (const ArgumentError&) {
        reader.fail("kernel", "\"gaussian\" or \"laplacian\"", "\"" + kernel + "\"");
      }
      out.domain.leading = reader.get<Index>("leading", 0);
      if (out.domain.leading < 0)
        reader.fail("leading", "an integer >= 0", concat(out.domain.leading));
      out.sigma_init = positive("sigma_init", reader.get<double>("sigma_init", out.sigma_init));
      break;
    }
    case AttentionVariantType::robust_kde:
      out.huber_a = positive("huber_a", reader.get<double>("huber_a", out.huber_a));
      break;
    case AttentionVariantType::fourier:
      out.fourier_epsilon = reader.get<double>("epsilon", out.fourier_epsilon);
      if (!(out.fourier_epsilon >= 0))
        reader.fail("epsilon", "a number >= 0", concat(out.fourier_epsilon));
      break;
    case AttentionVariantType::elliptical:
      out.elliptical_delta = positive("delta", reader.get<double>("delta", out.elliptical_delta));
      break;
    case AttentionVariantType::neutreno:
      out.neutreno_lambda = reader.get<double>("lambda", out.neutreno_lambda);
      break;
    case AttentionVariantType::softmax:
    case AttentionVariantType::kde:
      break;  // no parameters
  }
  if (content) {
    *content = reader.get<bool>("content", true);
    if (!*content && needs_content(out.type))
      reader.fail("content",
                  concat("true for ", attention_variant_name(out.type),
                         " (its range kernel reads the queries and keys); false is for softmax "
                         "and bilateral attention"),
                  "false");
  }
  reader.reject_unknown_keys();
  return out;
}

// The "attention" object; "content": false is written for positional-only attention only.
inline nlohmann::ordered_json attention_config_json(const AttentionVariantOptions& o,
                                                    bool content = true) {
  nlohmann::ordered_json json{{"type", attention_variant_name(o.type)}};
  if (o.boost) json["boost"] = o.boost;
  if (!content) json["content"] = false;
  switch (o.type) {
    case AttentionVariantType::bilateral:
      json["kernel"] = distance_kernel_name(o.domain.type);
      json["leading"] = o.domain.leading;
      json["sigma_init"] = o.sigma_init;
      break;
    case AttentionVariantType::robust_kde:
      json["huber_a"] = o.huber_a;
      break;
    case AttentionVariantType::fourier:
      json["epsilon"] = o.fourier_epsilon;
      break;
    case AttentionVariantType::elliptical:
      json["delta"] = o.elliptical_delta;
      break;
    case AttentionVariantType::neutreno:
      json["lambda"] = o.neutreno_lambda;
      break;
    case AttentionVariantType::softmax:
    case AttentionVariantType::kde:
      break;
  }
  return json;
}

// "position": {"type": ..., the settings of its registry entry} (docs/model-format.md), one of
// the registered encodings `accepts` takes (a sequence encoder: every one except those on a
// patch grid; a ViT's relative_position: none and those on the grid).
template <class Accepts>
PositionOptions parse_position_config(const ConfigReader& reader, Accepts&& accepts,
                                      const std::string& hint = "") {
  PositionOptions out;
  const auto name = reader.get<std::string>("type");
  for (const PositionEncoding& entry : position_encodings())
    if (accepts(entry) && name == entry.type.name()) out.type = entry.type;
  if (name != out.type.name() || !accepts(position_encoding(out.type)))
    reader.fail("type", concat("one of ", quoted_position_names(accepts), hint),
                "\"" + name + "\"");
  for (const PositionSetting& setting : position_encoding(out.type).settings) {
    if (!setting.required && !reader.has(setting.key)) continue;
    SettingValue value = setting.get(out);  // the default, and the type the value must have
    std::visit([&](auto& v) { v = reader.get<std::decay_t<decltype(v)>>(setting.key); }, value);
    if (!setting.choices.empty() &&
        std::find(setting.choices.begin(), setting.choices.end(), std::get<std::string>(value)) ==
            setting.choices.end()) {
      std::string allowed;
      for (const auto& choice : setting.choices)
        allowed += concat(allowed.empty() ? "\"" : "\" or \"", choice);
      reader.fail(setting.key, allowed + "\"", "\"" + std::get<std::string>(value) + "\"");
    }
    setting.set(out, value);
  }
  reader.reject_unknown_keys();
  return out;
}

inline nlohmann::ordered_json position_config_json(const PositionOptions& o) {
  nlohmann::ordered_json json{{"type", o.type.name()}};
  for (const PositionSetting& setting : position_encoding(o.type).settings)
    std::visit([&](const auto& v) { json[setting.key] = v; }, setting.get(o));
  return json;
}

// A sequence encoder's "position".
inline PositionOptions parse_sequence_position_config(const ConfigReader& reader) {
  return parse_position_config(
      reader, [](const PositionEncoding& e) { return e.kind != PositionKind::grid; },
      " (2-D encodings need an image grid: see VisionTransformer)");
}

inline ResidualOptions parse_residual_config(const ConfigReader& reader) {
  ResidualOptions out;
  const auto type = reader.get<std::string>("type");
  try {
    out.type = residual_type_from_name(type, "type");
  } catch (const ArgumentError&) {
    reader.fail("type", "\"standard\" or \"fidelity\"", "\"" + type + "\"");
  }
  if (out.type == ResidualType::fidelity) {
    out.learned = reader.get<bool>("learned", false);
    // A learned lambda is read from model.safetensors; "lambda" is then optional.
    if (!out.learned || reader.has("lambda")) {
      const auto lambda = reader.get<nlohmann::json>("lambda");
      if (lambda.is_number()) {
        out.lambda = {lambda.get<double>()};
      } else if (lambda.is_array() && std::all_of(lambda.begin(), lambda.end(),
                                                  [](const auto& v) { return v.is_number(); })) {
        out.lambda = lambda.get<std::vector<double>>();
      } else {
        reader.fail("lambda", "a number or an array of numbers (one per layer)", lambda.dump());
      }
    }
  }
  reader.reject_unknown_keys();
  return out;
}

inline nlohmann::ordered_json residual_config_json(const ResidualOptions& o) {
  nlohmann::ordered_json json{{"type", residual_type_name(o.type)}};
  if (o.type == ResidualType::fidelity) {
    if (o.learned) json["learned"] = true;
    if (!o.lambda.empty()) json["lambda"] = o.lambda;
  }
  return json;
}

}  // namespace detail

// Parses config.json's text; `where` prefixes every error message (the file's path).
inline EncoderModelConfig parse_encoder_config(const std::string& text,
                                               const std::string& where = k_config_file) {
  const detail::ConfigReader config(parse_json_text(text, {where, detail::k_max_config_levels}),
                                    where);
  const auto model_type = config.get<std::string>("model_type");
  if (model_type != k_model_type)
    config.fail("model_type", detail::concat("\"", k_model_type, "\""), "\"" + model_type + "\"");

  EncoderModelConfig out;
  EncoderLayerOptions& layer = out.encoder.layer;
  layer.d_model = config.get<Index>("d_model");
  layer.nhead = config.get<Index>("nhead");
  out.encoder.num_layers = config.get<Index>("num_layers");
  layer.dim_feedforward = config.get<Index>("dim_feedforward", layer.dim_feedforward);
  // nn.TransformerEncoderLayer always has its feed-forward block and norm2; attention-only
  // layers are a ViT's (mlp_ratio 0).
  if (layer.dim_feedforward <= 0)
    config.fail("dim_feedforward", "an integer > 0", detail::concat(layer.dim_feedforward));
  const auto activation = config.get<std::string>("activation", "relu");
  try {
    layer.activation = activation_from_name(activation, "activation");
  } catch (const ArgumentError& e) {
    throw IoError(detail::concat(where, ": ", e.what()));
  }
  layer.layer_norm_eps = config.get<double>("layer_norm_eps", layer.layer_norm_eps);
  layer.norm_first = config.get<bool>("norm_first", false);
  layer.bias = config.get<bool>("bias", true);
  out.encoder.final_norm = config.get<bool>("final_norm", false);
  out.encoder.position = detail::parse_sequence_position_config(config.object("position", "none"));
  layer.attention =
      detail::parse_attention_config(config.object("attention", "softmax"), &layer.content);
  out.encoder.residual = detail::parse_residual_config(config.object("residual", "standard"));
  config.reject_unknown_keys();
  return out;
}

// config.json's text for an encoder (what examples/export_pytorch.py writes).
inline std::string encoder_config_json(const EncoderModelConfig& config) {
  const EncoderOptions& o = config.encoder;
  nlohmann::ordered_json json;
  json["model_type"] = k_model_type;
  json["d_model"] = o.layer.d_model;
  json["nhead"] = o.layer.nhead;
  json["num_layers"] = o.num_layers;
  json["dim_feedforward"] = o.layer.dim_feedforward;
  json["activation"] = activation_name(o.layer.activation);
  json["layer_norm_eps"] = o.layer.layer_norm_eps;
  json["norm_first"] = o.layer.norm_first;
  json["bias"] = o.layer.bias;
  json["final_norm"] = o.final_norm;
  json["position"] = detail::position_config_json(o.position);
  json["attention"] = detail::attention_config_json(o.layer.attention, o.layer.content);
  json["residual"] = detail::residual_config_json(o.residual);
  return json.dump(2) + "\n";
}

// Reads a module's parameters from `weights`: every tensor the module has must be there with its
// shape, and no other tensor may be. `where` names the file in errors.
template <class Module>
void load_module_weights(const SafeTensors& weights, Module& module,
                         const std::string& where = k_weights_file) {
  std::vector<std::string> expected, missing, extra;
  for_each_parameter(module, "", [&](const std::string& name, auto&, const Shape& = {}) {
    expected.push_back(name);
    if (!weights.contains(name)) missing.push_back(name);
  });
  const std::set<std::string> known(expected.begin(), expected.end());
  for (const auto& name : weights.names())
    if (!known.count(name)) extra.push_back(name);
  if (!missing.empty() || !extra.empty())
    throw IoError(detail::concat(
        where, ": ", missing.empty() ? "" : "missing tensors " + detail::quoted_list(missing),
        missing.empty() || extra.empty() ? "" : "; ",
        extra.empty() ? "" : "unexpected tensors " + detail::quoted_list(extra)));
  try {
    load_parameters(weights, "", module);
  } catch (const std::exception& e) {  // a shape or dtype that does not fit
    throw IoError(detail::concat(where, ": ", e.what()));
  }
}

// A module's parameters under their state_dict names and shapes (a Conv2d weight as
// [E, C, P, P], a pos_embed as [1, N, E]), as model.safetensors holds them. Takes the module by
// value: for_each_parameter walks a mutable module.
template <class Module>
SafeTensorsWriter module_weights(Module module) {
  SafeTensorsWriter writer;
  for_each_parameter(module, "", [&](const std::string& name, auto& p, const Shape& stored = {}) {
    using T = typename std::decay_t<decltype(p)>::Scalar;
    const Shape shape = !stored.empty() ? stored
                        : std::decay_t<decltype(p)>::ColsAtCompileTime == 1
                            ? Shape{p.size()}
                            : Shape{p.rows(), p.cols()};
    // p is row-major (or a vector): its storage order is the tensor's.
    writer.add(name, Tensor<T>(shape, typename Tensor<T>::Storage(p.data(), p.data() + p.size())));
  });
  return writer;
}

// Writes a model directory (created if needed): config.json's text and model.safetensors.
inline void write_model_directory(const std::string& directory, const std::string& config_text,
                                  const SafeTensorsWriter& weights) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) throw IoError(detail::concat("cannot create '", directory, "': ", error.message()));
  const std::string config_path = directory + "/" + k_config_file;
  std::ofstream out(config_path, std::ios::binary);
  out << config_text;
  if (!out.flush()) throw IoError(detail::concat("cannot write '", config_path, "'"));
  weights.save(directory + "/" + k_weights_file);
}

// The "model_type" of a model directory's config.json ("transformer_encoder",
// "vision_transformer"): what a command reads to pick the loader.
inline std::string model_type_of(const std::string& directory) {
  const std::string config_path = directory + "/" + k_config_file;
  const detail::ConfigReader config(
      parse_json_text(detail::read_text_file(config_path, detail::k_max_config_bytes),
                      {config_path, detail::k_max_config_levels}),
      config_path);
  return config.get<std::string>("model_type");
}

// Writes an encoder model directory (created if needed) that load_encoder_model reads back.
template <class T>
void save_encoder_model(const EncoderModelConfig& config, const TransformerEncoder<T>& encoder,
                        const std::string& directory) {
  write_model_directory(directory, encoder_config_json(config), module_weights(encoder));
}

namespace detail {

// The fewest values (tensor elements) an encoder of these options holds: the weight matrices and
// tables whose sizes the options set, multiplied out with overflow checks (biases, norms and the
// variants' vectors are left out). Options out of their domain count 0: the constructor names them.
inline Index minimum_parameter_count(const EncoderOptions& o, const std::string& where) {
  const EncoderLayerOptions& layer = o.layer;
  if (layer.d_model <= 0 || layer.nhead <= 0 || layer.d_model % layer.nhead != 0 ||
      layer.dim_feedforward < 0 || o.num_layers <= 0)
    return 0;
  // Each product is named by the keys it comes from, the sums by what they total.
  const auto mul = [&](std::initializer_list<Index> sizes, const char* keys) {
    return attnlens::detail::checked_product<IoError>(sizes, concat(where, ": ", keys));
  };
  const auto add = [&](Index a, Index b) {
    return attnlens::detail::checked_add<IoError>(a, b, where + ": the parameter count");
  };
  const Index E = layer.d_model;
  // in_proj_weight (3E x E), out_proj.weight (E x E), linear1 and linear2 (FF x E each; none
  // in an attention-only layer).
  Index per_layer = add(mul({4, E, E}, "4 d_model^2 (in_proj, out_proj)"),
                        mul({2, E, layer.dim_feedforward}, "2 d_model dim_feedforward"));
  const PositionOptions& p = o.position;
  const PositionEncoding& encoding = position_encoding(p.type);
  const Index position = table_parameter_count(encoding, p, E, layer.nhead, where);
  if (encoding.kind != PositionKind::absolute) per_layer = add(per_layer, position);
  Index total = mul({o.num_layers, per_layer}, "num_layers x the parameters of a layer");
  if (encoding.kind == PositionKind::absolute) total = add(total, position);
  return total;
}

inline Index element_count(const SafeTensors& weights) {
  Index count = 0;
  // The reader checked each shape's count; their sum is at most the file's size in bytes.
  for (const auto& name : weights.names())
    count += attnlens::detail::shape_size(weights.info(name).shape);
  return count;
}

}  // namespace detail

// Builds the encoder that `config` describes and reads its parameters from `weights`. The
// sizes in the config are checked against the values `weights` holds before the model is
// allocated; every problem is an IoError naming config_where or weights_where.
template <class T>
TransformerEncoder<T> encoder_from_weights(const EncoderModelConfig& config,
                                           const SafeTensors& weights,
                                           const std::string& config_where = k_config_file,
                                           const std::string& weights_where = k_weights_file) {
  const Index needed = detail::minimum_parameter_count(config.encoder, config_where);
  const Index held = detail::element_count(weights);
  if (needed > held)
    throw IoError(
        detail::concat(config_where, ": the encoder it describes (d_model ",
                       config.encoder.layer.d_model, ", num_layers ", config.encoder.num_layers,
                       ", dim_feedforward ", config.encoder.layer.dim_feedforward, ", position ",
                       position_type_name(config.encoder.position.type), ") has at least ", needed,
                       " parameters, but ", weights_where, " holds ", held, " values"));
  std::optional<TransformerEncoder<T>> encoder;
  try {
    encoder.emplace(config.encoder);
  } catch (const ArgumentError& e) {  // d_model, nhead, ... out of their domain
    throw IoError(detail::concat(config_where, ": ", e.what()));
  }
  load_module_weights(weights, *encoder, weights_where);
  return std::move(*encoder);
}

// Loads an encoder model directory (config.json and model.safetensors). Every problem is an
// IoError naming the file and the key or tensor.
template <class T>
TransformerEncoder<T> load_encoder_model(const std::string& directory) {
  const std::string config_path = directory + "/" + k_config_file;
  const std::string weights_path = directory + "/" + k_weights_file;
  const EncoderModelConfig config = parse_encoder_config(
      detail::read_text_file(config_path, detail::k_max_config_bytes), config_path);
  return encoder_from_weights<T>(config, SafeTensors::load(weights_path), config_path,
                                 weights_path);
}

#ifdef ATTNLENS_COMPILED
#define ATTNLENS_MODEL_INSTANTIATIONS(T)                                                        \
  extern template void save_encoder_model<T>(const EncoderModelConfig&,                         \
                                             const TransformerEncoder<T>&, const std::string&); \
  extern template TransformerEncoder<T> encoder_from_weights<T>(                                \
      const EncoderModelConfig&, const SafeTensors&, const std::string&, const std::string&);   \
  extern template TransformerEncoder<T> load_encoder_model<T>(const std::string&);
ATTNLENS_MODEL_INSTANTIATIONS(float)
ATTNLENS_MODEL_INSTANTIATIONS(double)
#undef ATTNLENS_MODEL_INSTANTIATIONS
#endif

}  // namespace attnlens::io
