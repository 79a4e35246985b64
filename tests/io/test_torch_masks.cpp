// PyTorch-convention masks from a file: polarity, the (B*H) x L x S layout, dtype and shape
// errors.
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "attnlens/io/torch_masks.hpp"

namespace attnlens {
namespace {

constexpr ScoreShape k_shape{2, 3, 4, 5};  // B, H, L, S

TEST(TorchMasks, BoolMasksAreInvertedAndPerHeadMasksReshaped) {
  io::SafeTensorsWriter writer;
  Tensor<std::uint8_t> padding({2, 5});
  padding.at({1, 4}) = 1;  // PyTorch: ignore key 4 of sequence 1
  writer.add_bool("key_padding_mask", padding);
  Tensor<std::uint8_t> per_head({6, 4, 5});
  per_head.at({4, 2, 3}) = 1;         // sequence 1, head 1, query 2, key 3 not allowed
  writer.add("attn_mask", per_head);  // U8, which PyTorch also takes as bool
  const auto file = io::SafeTensors::parse(writer.bytes());
  const auto mask = io::read_torch_masks<float>(file, "", k_shape);
  ASSERT_TRUE(mask.key_keep && mask.keep);
  EXPECT_FALSE(mask.bias || mask.causal || mask.key_lengths);
  EXPECT_EQ(mask.key_keep->at({1, 4}), 0);
  EXPECT_EQ(mask.key_keep->at({0, 4}), 1);
  EXPECT_EQ(mask.keep->shape(), (Shape{2, 3, 4, 5}));
  EXPECT_EQ(mask.keep->at({1, 1, 2, 3}), 0);
  EXPECT_EQ(mask.keep->at({1, 0, 2, 3}), 1);
}

TEST(TorchMasks, FloatAttnMaskIsABias) {
  io::SafeTensorsWriter writer;
  Tensor<double> bias({4, 5});
  bias.at({0, 1}) = -std::numeric_limits<double>::infinity();
  bias.at({3, 4}) = 0.25;
  writer.add("p.attn_mask", bias);
  const auto mask =
      io::read_torch_masks<float>(io::SafeTensors::parse(writer.bytes()), "p.", k_shape);
  ASSERT_TRUE(mask.bias);
  EXPECT_EQ(mask.bias->at({3, 4}), 0.25f);
  EXPECT_EQ(mask.bias->at({0, 1}), -std::numeric_limits<float>::infinity());
}

template <class Error>
void expect_error(io::SafeTensorsWriter& writer, const std::string& word) {
  try {
    io::read_torch_masks<float>(io::SafeTensors::parse(writer.bytes()), "", k_shape);
    ADD_FAILURE() << "no exception naming " << word;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

TEST(TorchMasks, WrongShapesAndDtypesNameTheTensor) {
  io::SafeTensorsWriter padding_shape;
  padding_shape.add_bool("key_padding_mask", Tensor<std::uint8_t>({5, 2}));
  expect_error<ShapeError>(padding_shape, "key_padding_mask");
  io::SafeTensorsWriter padding_dtype;
  padding_dtype.add("key_padding_mask", Tensor<float>({2, 5}));
  expect_error<ArgumentError>(padding_dtype, "key_padding_mask");
  io::SafeTensorsWriter attn_shape;
  attn_shape.add_bool("attn_mask", Tensor<std::uint8_t>({3, 4, 5}));  // H x L x S is not PyTorch's
  expect_error<ShapeError>(attn_shape, "attn_mask");
  io::SafeTensorsWriter attn_dtype;
  attn_dtype.add("attn_mask", Tensor<std::int64_t>({4, 5}));
  expect_error<IoError>(attn_dtype, "attn_mask");
}

}  // namespace
}  // namespace attnlens
