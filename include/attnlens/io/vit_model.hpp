// The vision transformer's model directory (docs/model-format.md, "Vision transformers"):
// config.json with timm's VisionTransformer arguments (img_size, patch_size, in_chans,
// num_classes, embed_dim, depth, num_heads, mlp_ratio, class_token, global_pool, ...) plus
// attnlens's choices (relative positions, attention variant, residual, post-norm blocks) and the
// input normalization, and model.safetensors with timm's state_dict names
// (blocks/vision_transformer.hpp, for_each_parameter).
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/position/encoding.hpp"
#include "attnlens/position/registry.hpp"

namespace attnlens::io {

inline constexpr const char* k_vit_model_type = "vision_transformer";

// What a ViT directory's config.json describes: the model, how images in [0, 1] are normalized
// before it sees them (per channel (x - mean) / std; empty: not at all), and the classes' names
// (empty, or one per class).
struct VitModelConfig {
  VisionTransformerOptions vit;
  std::vector<double> mean, std;
  std::vector<std::string> class_names;
};

namespace detail {

// "relative_position": one of the encodings on a patch grid (the grid comes from the image).
inline PositionOptions parse_grid_position_config(const ConfigReader& reader) {
  return parse_position_config(reader, [](const PositionEncoding& e) {
    return e.kind == PositionKind::none || e.kind == PositionKind::grid;
  });
}

// An array of `count` numbers (one per channel); `positive`: each > 0.
inline std::vector<double> parse_channel_values(const ConfigReader& config, const char* key,
                                                Index count, bool positive) {
  const nlohmann::json value = config.get<nlohmann::json>(key);
  const auto expected = concat("an array of ", count, " numbers (one per input channel)",
                               positive ? ", each > 0" : "");
  if (!value.is_array() || static_cast<Index>(value.size()) != count)
    config.fail(key, expected, value.dump());
  std::vector<double> out;
  for (const auto& v : value) {
    if (!v.is_number() || !std::isfinite(v.get<double>()) || (positive && !(v.get<double>() > 0)))
      config.fail(key, expected, value.dump());
    out.push_back(v.get<double>());
  }
  return out;
}

// The fewest values a ViT of these options holds (weights and tables only, as for an encoder),
// with overflow checks: the config's sizes are checked against model.safetensors before anything
// is allocated from them. Options out of their domain count 0: the constructor names them.
inline Index minimum_vit_parameter_count(const VisionTransformerOptions& o,
                                         const std::string& where) {
  if (o.patch_size <= 0 || o.in_chans <= 0 || o.image_height <= 0 || o.image_width <= 0 ||
      o.num_classes < 0)
    return 0;
  const auto mul = [&](std::initializer_list<Index> sizes, const char* keys) {
    return attnlens::detail::checked_product<IoError>(sizes, concat(where, ": ", keys));
  };
  const auto add = [&](Index a, Index b) {
    return attnlens::detail::checked_add<IoError>(a, b, where + ": the parameter count");
  };
  EncoderOptions blocks = o.encoder;
  blocks.position = o.relative_position;
  blocks.position.grid =
      Grid2d{o.image_height / o.patch_size, o.image_width / o.patch_size, o.class_token ? 1 : 0};
  Index total = minimum_parameter_count(blocks, where);
  if (total == 0) return 0;
  const Index E = o.encoder.layer.d_model;
  total = add(total, mul({E, o.in_chans, o.patch_size, o.patch_size},
                         "embed_dim x in_chans x patch_size^2 (patch_embed.proj)"));
  if (o.position == VitPosition::learned) {
    const Index patches = mul({o.image_height / o.patch_size, o.image_width / o.patch_size},
                              "the patch grid (img_size / patch_size)");
    total = add(total, mul({add(patches, o.class_token ? 1 : 0), E}, "pos_embed"));
  }
  return add(total, mul({o.num_classes, E}, "num_classes x embed_dim (head)"));
}

}  // namespace detail

// Parses a ViT config.json's text; `where` prefixes every error message (the file's path).
inline VitModelConfig parse_vit_config(const std::string& text,
                                       const std::string& where = k_config_file) {
  using attnlens::detail::concat;
  const detail::ConfigReader config(parse_json_text(text, {where, detail::k_max_config_levels}),
                                    where);
  const auto model_type = config.get<std::string>("model_type");
  if (model_type != k_vit_model_type)
    config.fail("model_type", concat("\"", k_vit_model_type, "\""), "\"" + model_type + "\"");

  VitModelConfig out;
  VisionTransformerOptions& o = out.vit;
  // img_size: one number (square) or [height, width], as timm takes it.
  const nlohmann::json size = config.get<nlohmann::json>("img_size");
  const auto is_size = [](const nlohmann::json& v) { return v.is_number_integer(); };
  if (is_size(size)) {
    o.image_height = o.image_width = size.get<Index>();
  } else if (size.is_array() && size.size() == 2 && is_size(size[0]) && is_size(size[1])) {
    o.image_height = size[0].get<Index>();
    o.image_width = size[1].get<Index>();
  } else {
    config.fail("img_size", "an integer or [height, width]", size.dump());
  }
  o.patch_size = config.get<Index>("patch_size");
  o.in_chans = config.get<Index>("in_chans", 3);
  o.num_classes = config.get<Index>("num_classes");
  EncoderLayerOptions& layer = o.encoder.layer;
  layer.d_model = config.get<Index>("embed_dim");
  o.encoder.num_layers = config.get<Index>("depth");
  layer.nhead = config.get<Index>("num_heads");
  // timm: hidden = int(embed_dim * mlp_ratio); a ratio that lands within 1e-9 of an integer
  // counts as that integer, so that 128 / 192 * 192 is 128 and not 127.
  // 0: attention-only blocks, without mlp and norm2 (not timm's: timm's Block always has both).
  const double ratio = config.get<double>("mlp_ratio", 4.0);
  const double hidden = ratio * static_cast<double>(layer.d_model);
  const auto bad_ratio = [&] {
    config.fail("mlp_ratio",
                "0 (attention-only blocks) or a number > 0 giving a hidden width "
                "int(embed_dim * mlp_ratio) >= 1",
                concat(ratio));
  };
  if (!(ratio >= 0) || !(hidden < 1e15)) bad_ratio();  // before the cast: NaN, huge, negative
  layer.dim_feedforward = static_cast<Index>(std::floor(hidden + 1e-9));
  if (ratio > 0 && layer.dim_feedforward < 1) bad_ratio();
  const auto activation = config.get<std::string>("activation", "gelu");
  try {
    layer.activation = activation_from_name(activation, "activation");
  } catch (const ArgumentError& e) {
    throw IoError(concat(where, ": ", e.what()));
  }
  layer.layer_norm_eps = config.get<double>("layer_norm_eps", 1e-6);  // timm's
  layer.norm_first = config.get<bool>("norm_first", true);
  layer.bias = config.get<bool>("bias", true);
  // timm's dropout rates (training only): proj_drop_rate on the attention block's output and
  // in and after the MLP; attention-probability dropout is not implemented, so a nonzero
  // attn_drop_rate is refused rather than ignored.
  layer.dropout = config.get<double>("proj_drop_rate", 0.0);
  if (!(layer.dropout >= 0 && layer.dropout < 1))
    config.fail("proj_drop_rate", "a probability in [0, 1)", concat(layer.dropout));
  const double attn_drop_rate = config.get<double>("attn_drop_rate", 0.0);
  if (attn_drop_rate != 0)
    config.fail("attn_drop_rate",
                "0 (dropout on the attention probabilities is not implemented; proj_drop_rate is)",
                concat(attn_drop_rate));
  o.encoder.final_norm = config.get<bool>("final_norm", true);
  o.class_token = config.get<bool>("class_token", true);
  const auto pool = config.get<std::string>("global_pool", o.class_token ? "token" : "avg");
  if (pool != "token" && pool != "avg")
    config.fail("global_pool", "\"token\" or \"avg\"", "\"" + pool + "\"");
  o.pooling = pool == "token" ? VitPooling::token : VitPooling::mean;
  const auto pos_embed = config.get<std::string>("pos_embed", "learned");
  if (pos_embed != "learned" && pos_embed != "none")
    config.fail("pos_embed", "\"learned\" or \"none\"", "\"" + pos_embed + "\"");
  o.position = pos_embed == "learned" ? VitPosition::learned : VitPosition::none;
  o.relative_position =
      detail::parse_grid_position_config(config.object("relative_position", "none"));
  layer.attention =
      detail::parse_attention_config(config.object("attention", "softmax"), &layer.content);
  o.encoder.residual = detail::parse_residual_config(config.object("residual", "standard"));
  if (config.has("mean") || config.has("std")) {
    if (o.in_chans <= 0) config.fail("in_chans", "an integer > 0", concat(o.in_chans));
    out.mean = detail::parse_channel_values(config, "mean", o.in_chans, false);
    out.std = detail::parse_channel_values(config, "std", o.in_chans, true);
  }
  if (config.has("class_names")) {
    const nlohmann::json names = config.get<nlohmann::json>("class_names");
    const auto expected = concat("an array of num_classes (", o.num_classes, ") strings");
    if (!names.is_array() || static_cast<Index>(names.size()) != o.num_classes)
      config.fail("class_names", expected, names.dump());
    for (const auto& name : names) {
      if (!name.is_string()) config.fail("class_names", expected, names.dump());
      out.class_names.push_back(name.get<std::string>());
    }
  }
  config.reject_unknown_keys();
  return out;
}

// config.json's text for a ViT (what attnlens train and examples/export_pytorch.py write).
inline std::string vit_config_json(const VitModelConfig& config) {
  const VisionTransformerOptions& o = config.vit;
  const EncoderLayerOptions& layer = o.encoder.layer;
  nlohmann::ordered_json json;
  json["model_type"] = k_vit_model_type;
  json["img_size"] = {o.image_height, o.image_width};
  json["patch_size"] = o.patch_size;
  json["in_chans"] = o.in_chans;
  json["num_classes"] = o.num_classes;
  json["embed_dim"] = layer.d_model;
  json["depth"] = o.encoder.num_layers;
  json["num_heads"] = layer.nhead;
  json["mlp_ratio"] =
      static_cast<double>(layer.dim_feedforward) / static_cast<double>(layer.d_model);
  json["activation"] = activation_name(layer.activation);
  json["layer_norm_eps"] = layer.layer_norm_eps;
  json["norm_first"] = layer.norm_first;
  json["bias"] = layer.bias;
  if (layer.dropout > 0) json["proj_drop_rate"] = layer.dropout;  // the default 0 left out
  json["final_norm"] = o.encoder.final_norm;
  json["class_token"] = o.class_token;
  json["global_pool"] = o.pooling == VitPooling::token ? "token" : "avg";
  json["pos_embed"] = o.position == VitPosition::learned ? "learned" : "none";
  json["relative_position"] = detail::position_config_json(o.relative_position);
  json["attention"] = detail::attention_config_json(layer.attention, layer.content);
  json["residual"] = detail::residual_config_json(o.encoder.residual);
  if (!config.mean.empty()) {
    json["mean"] = config.mean;
    json["std"] = config.std;
  }
  if (!config.class_names.empty()) json["class_names"] = config.class_names;
  return json.dump(2) + "\n";
}

// Builds the ViT that `config` describes and reads its parameters from `weights` (sizes checked
// against the values `weights` holds first); every problem is an IoError naming the file.
template <class T>
VisionTransformer<T> vit_from_weights(const VitModelConfig& config, const SafeTensors& weights,
                                      const std::string& config_where = k_config_file,
                                      const std::string& weights_where = k_weights_file) {
  const VisionTransformerOptions& o = config.vit;
  const Index needed = detail::minimum_vit_parameter_count(o, config_where);
  const Index held = detail::element_count(weights);
  if (needed > held)
    throw IoError(attnlens::detail::concat(
        config_where, ": the vision transformer it describes (img_size ", o.image_height, " x ",
        o.image_width, ", patch_size ", o.patch_size, ", embed_dim ", o.encoder.layer.d_model,
        ", depth ", o.encoder.num_layers, ") has at least ", needed, " parameters, but ",
        weights_where, " holds ", held, " values"));
  std::optional<VisionTransformer<T>> vit;
  try {
    vit.emplace(o);
  } catch (const ArgumentError& e) {  // sizes out of their domain
    throw IoError(attnlens::detail::concat(config_where, ": ", e.what()));
  }
  load_module_weights(weights, *vit, weights_where);
  return std::move(*vit);
}

// Reads a ViT directory's config.json.
inline VitModelConfig load_vit_config(const std::string& directory) {
  const std::string path = directory + "/" + k_config_file;
  return parse_vit_config(detail::read_text_file(path, detail::k_max_config_bytes), path);
}

// Loads a ViT model directory (config.json and model.safetensors).
template <class T>
VisionTransformer<T> load_vit_model(const std::string& directory) {
  return vit_from_weights<T>(load_vit_config(directory),
                             SafeTensors::load(directory + "/" + k_weights_file),
                             directory + "/" + k_config_file, directory + "/" + k_weights_file);
}

// Writes a ViT model directory (created if needed) that load_vit_model reads back. The config's
// model options must be the model's own (the checkpoint of a training run: attnlens train).
template <class T>
void save_vit_model(const VitModelConfig& config, const VisionTransformer<T>& vit,
                    const std::string& directory) {
  write_model_directory(directory, vit_config_json(config), module_weights(vit));
}

}  // namespace attnlens::io
