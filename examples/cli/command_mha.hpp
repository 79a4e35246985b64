// attnlens mha: torch.nn.MultiheadAttention (batch_first) on a state_dict and inputs saved
// from PyTorch, with PyTorch's mask conventions (bool True = not allowed, float = added), and
// optionally a position encoding applied inside each head (ALiBi, T5 buckets, RoPE).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/t5.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

struct MhaArguments {
  std::string weights, prefix, input, output;
  Index num_heads = 0;
  bool causal = false, need_weights = false, use_double = false;
  std::string position = "none";
  Index num_buckets = 32, max_distance = 128;  // T5 (HF's defaults)
  double rope_base = 10000.0;
  const CLI::Option *num_buckets_option = nullptr, *max_distance_option = nullptr,
                    *rope_base_option = nullptr;
};

namespace detail_mha {

inline bool is_t5(const std::string& position) {
  return position == "t5" || position == "t5-causal";
}
inline bool is_rope(const std::string& position) {
  return position == "rope" || position == "rope-half";
}

// The input tensors mha reads, and the state_dict names it reads under --prefix.
inline const std::vector<std::string> k_input_names = {"query", "key", "value", "key_padding_mask",
                                                       "attn_mask"};
inline std::vector<std::string> weight_names(const MhaArguments& args) {
  std::vector<std::string> names = {"in_proj_weight", "in_proj_bias",  "q_proj_weight",
                                    "k_proj_weight",  "v_proj_weight", "out_proj.weight",
                                    "out_proj.bias"};
  if (is_t5(args.position)) names.push_back("relative_attention_bias.weight");
  for (auto& name : names) name = args.prefix + name;
  return names;
}

// Options that the chosen --position does not read are an error, not ignored.
inline void check_position_options(const MhaArguments& args) {
  const std::string why = "to --position " + args.position;
  reject_unless(args.num_buckets_option, is_t5(args.position), why + " (only to t5, t5-causal)");
  reject_unless(args.max_distance_option, is_t5(args.position), why + " (only to t5, t5-causal)");
  reject_unless(args.rope_base_option, is_rope(args.position), why + " (only to rope, rope-half)");
}

// Adds the --position encoding to every head: a score term on q.k / sqrt(d), or RoPE on the
// projected q and k; positions count from 0 for queries and keys.
template <class T>
void attach_position(const MhaArguments& args, const io::SafeTensors& weights,
                     MultiHeadAttention<T>& mha) {
  const std::string& p = args.position;
  if (p == "alibi" || p == "alibi-causal") {
    mha.score_terms.push_back(
        std::make_shared<Alibi<T>>(AlibiOptions{args.num_heads, p != "alibi"}));
  } else if (is_t5(p)) {
    // The table first: its size comes from the file, and --num-buckets must match it.
    Matrix<T> table = io::read_matrix<T>(weights, args.prefix + "relative_attention_bias.weight",
                                         args.num_buckets, args.num_heads);
    auto t5 = std::make_shared<T5RelativeBias<T>>(
        T5BiasOptions{args.num_heads, args.num_buckets, args.max_distance, p == "t5"});
    t5->relative_attention_bias = std::move(table);
    mha.score_terms.push_back(t5);
  } else if (is_rope(p)) {
    const RopePairing pairing = p == "rope" ? RopePairing::interleaved : RopePairing::half;
    mha.query_key_transforms.push_back(
        std::make_shared<RotaryEmbedding<T>>(RopeOptions{mha.head_dim(), args.rope_base, pairing}));
  }
}

template <class T>
void run(const MhaArguments& args) {
  check_position_options(args);
  const auto weights = io::SafeTensors::load(args.weights);
  // Every tensor under --prefix must be one mha reads: a misspelt in_proj_bias, or bias_k and
  // bias_v (add_bias_kv, which attnlens does not implement), must not be skipped.
  require_known_tensors(weights, args.weights, weight_names(args), args.prefix);
  const auto input = io::SafeTensors::load(args.input);
  require_known_tensors(input, args.input, k_input_names);
  auto mha = io::load_multi_head_attention<T>(weights, args.prefix, args.num_heads);
  attach_position(args, weights, mha);

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
  cmd->add_option("--position", args->position,
                  "Position encoding inside each head: alibi, alibi-causal (m_h (j - i)), t5, "
                  "t5-causal (reads relative_attention_bias.weight [num_buckets, H]), rope "
                  "(interleaved pairs), rope-half (GPT-NeoX pairs), or none")
      ->check(
          CLI::IsMember({"none", "alibi", "alibi-causal", "t5", "t5-causal", "rope", "rope-half"}));
  args->num_buckets_option =
      cmd->add_option("--num-buckets", args->num_buckets, "T5 buckets (default 32)");
  args->max_distance_option =
      cmd->add_option("--max-distance", args->max_distance, "T5 max_distance (default 128)");
  args->rope_base_option =
      cmd->add_option("--rope-base", args->rope_base, "RoPE base (default 10000)")
          ->check(k_positive_number);
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
