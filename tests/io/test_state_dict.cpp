// Loading nn.MultiheadAttention from state_dict entries: what is inferred, and every way a
// file can fail to be one.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>

#include "attnlens/io/state_dict.hpp"

namespace attnlens {
namespace {

io::SafeTensors file_of(const std::map<std::string, Tensor<float>>& tensors) {
  io::SafeTensorsWriter writer;
  for (const auto& [name, tensor] : tensors) writer.add(name, tensor);
  return io::SafeTensors::parse(writer.bytes());
}

Tensor<float> filled(const Shape& shape, float start) {
  Tensor<float> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = start + 0.01f * static_cast<float>(i);
  return t;
}

template <class Error>
void expect_error(const std::function<void()>& body, const std::string& word) {
  try {
    body();
    ADD_FAILURE() << "no exception; expected one naming " << word;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

TEST(StateDict, LoadsPackedProjectionsUnderAPrefix) {
  const auto file = file_of({{"p.in_proj_weight", filled({12, 4}, 0.0f)},
                             {"p.in_proj_bias", filled({12}, 1.0f)},
                             {"p.out_proj.weight", filled({4, 4}, 2.0f)},
                             {"p.out_proj.bias", filled({4}, 3.0f)}});
  const auto mha = io::load_multi_head_attention<double>(file, "p.", 2);
  EXPECT_EQ(mha.embed_dim(), 4);
  EXPECT_TRUE(mha.packed());
  EXPECT_TRUE(mha.has_bias());
  EXPECT_FLOAT_EQ(static_cast<float>(mha.in_proj_weight(11, 3)), 0.01f * 47);
  EXPECT_FLOAT_EQ(static_cast<float>(mha.out_proj.bias[3]), 3.03f);
}

TEST(StateDict, LoadsSeparateProjectionsWithoutBias) {
  const auto file = file_of({{"q_proj_weight", filled({4, 4}, 0.0f)},
                             {"k_proj_weight", filled({4, 3}, 0.0f)},
                             {"v_proj_weight", filled({4, 5}, 0.0f)},
                             {"out_proj.weight", filled({4, 4}, 0.0f)}});
  const auto mha = io::load_multi_head_attention<float>(file, "", 1);
  EXPECT_EQ(mha.kdim(), 3);
  EXPECT_EQ(mha.vdim(), 5);
  EXPECT_FALSE(mha.has_bias());
}

TEST(StateDict, MalformedStateDictsNameTheTensor) {
  const auto packed = [](std::map<std::string, Tensor<float>> change) {
    std::map<std::string, Tensor<float>> t{{"in_proj_weight", filled({12, 4}, 0.0f)},
                                           {"in_proj_bias", filled({12}, 0.0f)},
                                           {"out_proj.weight", filled({4, 4}, 0.0f)},
                                           {"out_proj.bias", filled({4}, 0.0f)}};
    for (auto& [k, v] : change) {
      if (v.empty())
        t.erase(k);
      else
        t[k] = v;
    }
    return file_of(t);
  };
  expect_error<IoError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"in_proj_weight", {}}}), "", 2);
      },
      "in_proj_weight");
  expect_error<ShapeError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"in_proj_weight", filled({10, 4}, 0)}}), "",
                                             2);
      },
      "in_proj_weight");
  expect_error<ShapeError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"out_proj.weight", filled({4, 3}, 0)}}), "",
                                             2);
      },
      "out_proj.weight");
  expect_error<ShapeError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"in_proj_bias", filled({4}, 0)}}), "", 2);
      },
      "in_proj_bias");
  expect_error<IoError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"out_proj.bias", {}}}), "", 2);
      },
      "out_proj.bias");
  expect_error<IoError>(
      [&] {
        io::load_multi_head_attention<float>(packed({{"in_proj_bias", {}}}), "", 2);
      },
      "in_proj_bias");
  expect_error<ArgumentError>([&] { io::load_multi_head_attention<float>(packed({}), "", 3); },
                              "num_heads");
  expect_error<IoError>([&] { io::load_multi_head_attention<float>(packed({}), "encoder.", 2); },
                        "encoder.in_proj_weight");
  const auto separate = file_of({{"q_proj_weight", filled({4, 4}, 0.0f)},
                                 {"k_proj_weight", filled({4, 3}, 0.0f)},
                                 {"v_proj_weight", filled({3, 5}, 0.0f)},
                                 {"out_proj.weight", filled({4, 4}, 0.0f)}});
  expect_error<ShapeError>([&] { io::load_multi_head_attention<float>(separate, "", 1); },
                           "v_proj_weight");
}

}  // namespace
}  // namespace attnlens
