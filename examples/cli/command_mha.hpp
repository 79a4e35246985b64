// attnlens mha: torch.nn.MultiheadAttention (batch_first) on a state_dict and inputs saved
// from PyTorch, with PyTorch's mask conventions (bool True = not allowed, float = added), and
// optionally a relative position encoding of the registry applied inside each head.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/blocks/position_encoding.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "attnlens/position/registry.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/position_option.hpp"

namespace attnlens::cli {

struct MhaArguments {
  std::string weights, prefix, input, output;
  Index num_heads = 0;
  bool causal = false, need_weights = false, use_double = false;
  PositionArguments position;
};

namespace detail_mha {

// The input tensors mha reads, and the state_dict names it reads under --prefix.
inline const std::vector<std::string> k_input_names = {"query", "key", "value", "key_padding_mask",
                                                       "attn_mask"};
inline std::vector<std::string> weight_names(const MhaArguments& args,
                                             const PositionOptions& position) {
  std::vector<std::string> names = {"in_proj_weight", "in_proj_bias",  "q_proj_weight",
                                    "k_proj_weight",  "v_proj_weight", "out_proj.weight",
                                    "out_proj.bias"};
  const PositionEncoding& encoding = position_encoding(position.type);
  if (encoding.parameters)  // the names do not depend on the sizes
    for (const ParameterShape& p :
         encoding.parameters(position, args.num_heads, args.num_heads, args.weights))
      names.push_back(p.name);
  for (auto& name : names) name = args.prefix + name;
  return names;
}

template <class T>
void run(const MhaArguments& args) {
  const PositionOptions position = position_options(args.position);
  const auto weights = io::SafeTensors::load(args.weights);
  // Every tensor under --prefix must be one mha reads: a misspelt in_proj_bias, or bias_k and
  // bias_v (add_bias_kv, which attnlens does not implement), must not be skipped.
  require_known_tensors(weights, args.weights, weight_names(args, position), args.prefix);
  const auto input = io::SafeTensors::load(args.input);
  require_known_tensors(input, args.input, k_input_names);
  auto mha = io::load_multi_head_attention<T>(weights, args.prefix, args.num_heads);
  // The encoding acts inside each head; positions count from 0 for queries and keys.
  if (position.type != PositionType::none)
    RelativePosition<T>(position.type,
                        io::load_position_factor<T>(weights, args.prefix, position, mha.embed_dim(),
                                                    mha.num_heads()))
        .attach(mha);

  const Tensor<T> query = input.get<T>("query");
  detail::require_shape(query.rank() == 3, "tensor 'query'", "[B, L, E]",
                        detail::shape_string(query.shape()));
  const bool cross = input.contains("key") || input.contains("value");
  if (cross && !(input.contains("key") && input.contains("value")))
    throw IoError(std::string("missing tensor '") + (input.contains("key") ? "value" : "key") +
                  "' in '" + args.input +
                  "': give both key and value, or neither for self-attention");
  const Tensor<T> key = cross ? input.get<T>("key") : Tensor<T>();
  const Tensor<T> value = cross ? input.get<T>("value") : Tensor<T>();
  if (cross)
    detail::require_shape(key.rank() == 3, "tensor 'key'", "[B, S, kdim]",
                          detail::shape_string(key.shape()));
  const Index B = query.dim(0), L = query.dim(1);
  const Index S = cross ? key.dim(1) : L;

  AttentionMask<T> mask = io::read_torch_masks<T>(input, "", {B, args.num_heads, L, S});
  mask.causal = args.causal;
  MultiHeadForwardOptions options;
  if (args.need_weights) options.weights = AttentionWeights::per_head;
  const auto result =
      cross ? mha.forward(query, key, value, mask, options) : mha.forward(query, mask, options);

  io::SafeTensorsWriter writer;
  writer.add("output", result.output);
  if (args.need_weights) writer.add("weights", result.weights);
  writer.save(args.output);
}

}  // namespace detail_mha

inline void add_mha_command(CLI::App& app) {
  auto args = std::make_shared<MhaArguments>();
  CLI::App* cmd = app.add_subcommand(
      "mha", "Run torch.nn.MultiheadAttention (batch_first) from a saved state_dict");
  cmd->add_option("--weights", args->weights,
                  "state_dict: in_proj_weight [in_proj_bias] out_proj.weight [out_proj.bias], "
                  "or q_proj_weight k_proj_weight v_proj_weight instead of in_proj_weight")
      ->required();
  cmd->add_option("--prefix", args->prefix, "Prefix of the state_dict keys, e.g. self_attn.");
  cmd->add_option("--num-heads", args->num_heads, "Number of heads")
      ->required()
      ->check(k_positive_number);
  cmd->add_option("--input", args->input,
                  "query [B,L,E]; optional key [B,S,kdim], value [B,S,vdim], key_padding_mask "
                  "[B,S] (True = ignore), attn_mask [L,S] or [B*H,L,S] (bool True = not "
                  "allowed, or float added)")
      ->required();
  cmd->add_option("--output", args->output, "Output file: output [B,L,E] (and weights)")
      ->required();
  cmd->add_flag("--causal", args->causal, "Mask keys after the query (j > i)");
  cmd->add_flag("--need-weights", args->need_weights, "Also write per-head weights [B,H,L,S]");
  cmd->add_flag("--double", args->use_double, "Compute and write in float64 (default float32)");
  add_position_options(cmd, args->position);
  cmd->callback([args] {
    run_reporting_errors("mha", [&] {
      if (args->use_double)
        detail_mha::run<double>(*args);
      else
        detail_mha::run<float>(*args);
    });
  });
}

}  // namespace attnlens::cli
