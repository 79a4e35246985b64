// Hostile input to the attnlens tool (docs/limits.md): every size, option and file a user
// controls is checked before it costs memory or time. Each test rebuilds its input and expects
// exit code 2 with one line naming the argument, or exit 0 with the mathematically right answer,
// within 20 s and 4 GiB of address space (testing::run_cli_limited).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/io/png.hpp"
#include "attnlens/io/safetensors.hpp"
#include "support/cli_test.hpp"
#include "support/direct_filters.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;
using testing::CliRun;
using testing::run_cli_limited;

const std::string k_int64_max = "9223372036854775807";

class CliHostileInput : public testing::CliTest {
 protected:
  // A copy of the committed encoder model (d_model 32, 2 layers) whose config.json is edited.
  std::string model_with(const std::function<void(nlohmann::json&)>& edit) {
    const fs::path source = testing::fixture_path("cli/encode_post_relu_masks");
    const fs::path target = dir_ / ("model" + std::to_string(models_++));
    fs::create_directories(target);
    fs::copy_file(source / "model.safetensors", target / "model.safetensors");
    nlohmann::json config = nlohmann::json::parse(std::ifstream(source / "config.json"));
    edit(config);
    std::ofstream(target / "config.json") << config.dump();
    return target.string();
  }
  std::string model_with_text(const std::string& config_text) {
    const std::string dir = model_with([](nlohmann::json&) {});
    std::ofstream(dir + "/config.json") << config_text;
    return dir;
  }
  std::string encode(const std::string& model) const {
    return "encode --model " + model + " --input " + cli_fixture("encode_post_relu_masks_input") +
           " --output " + out_path();
  }
  std::string mha(const std::string& name) const {
    return "mha --weights " + cli_fixture("mha_" + name + "_weights") + " --input " +
           cli_fixture("mha_" + name + "_input") + " --output " + out_path();
  }
  std::string picture() {
    const std::string file = path("in.png");
    io::write_png_gray(file, testing::test_picture(14, 19, 11));
    return file;
  }
  Matrix<double> denoised(const std::string& args) {
    const CliRun run =
        run_cli_limited("denoise --input " + picture() + " " + args + " --output " + out_path());
    EXPECT_EQ(run.exit_code, 0) << run.output;
    const Tensor<float> image = io::SafeTensors::load(out_path()).get<float>("image");
    return image.matrix().cast<double>();
  }

  int models_ = 0;
};

// Root cause 1: sizes from config.json allocate the model before the weights are looked at.
TEST_F(CliHostileInput, ConfigSizesAreCheckedAgainstTheWeightsFirst) {
  const std::pair<const char*, std::function<void(nlohmann::json&)>> cases[] = {
      {"num_layers 1e6", [](auto& c) { c["num_layers"] = 1'000'000; }},
      {"num_layers 1e9", [](auto& c) { c["num_layers"] = 1'000'000'000; }},
      {"d_model 1e9", [](auto& c) { c["d_model"] = 1'000'000'000, c["nhead"] = 1; }},
      {"dim_feedforward 1e12", [](auto& c) { c["dim_feedforward"] = 1'000'000'000'000; }},
      {"learned",
       [](auto& c) {
         c["position"] = {{"type", "learned"}, {"max_len", 1'000'000'000'000}};
       }},
      {"shaw",
       [](auto& c) {
         c["position"] = {{"type", "shaw"}, {"max_relative_position", 1'000'000'000'000}};
       }},
      {"t5",
       [](auto& c) {
         c["position"] = {{"type", "t5"}, {"num_buckets", 1'000'000'000'000}};
       }},
  };
  for (const auto& [what, edit] : cases) {
    SCOPED_TRACE(what);
    expect_bad_input(encode(model_with(edit)), "holds 17088 values");
  }
}

// Root cause 3: integer overflow in sizes.
TEST_F(CliHostileInput, OverflowingConfigSizesAreNamed) {
  expect_bad_input(encode(model_with([](auto& c) {
                     c["position"] = {{"type", "shaw"}, {"max_relative_position", INT64_MAX}};
                   })),
                   "position: max_relative_position: 2 x 9223372036854775807 overflows");
  // Beyond int64: reported as written, not as -1.
  expect_bad_input(encode(model_with_text(R"({"model_type": "transformer_encoder",
      "d_model": 18446744073709551615, "nhead": 1, "num_layers": 1})")),
                   "d_model: expected an integer <= 9223372036854775807, got 18446744073709551615");
}

// Root cause 2: a deeply nested config.json overflowed the stack; duplicate keys were accepted.
TEST_F(CliHostileInput, ConfigJsonIsParsedFlatAndStrict) {
  const std::string deep = std::string(140'000, '[') + std::string(140'000, ']');
  expect_bad_input(
      encode(model_with_text(R"({"model_type": "transformer_encoder", "x": )" + deep + "}")),
      "nests deeper than 8 levels");
  expect_bad_input(encode(model_with_text(R"({"model_type": "transformer_encoder",
      "d_model": 32, "d_model": 64, "nhead": 4, "num_layers": 2})")),
                   "duplicate key 'd_model'");
  // A config.json that never ends (a device) is not read whole.
  expect_bad_input("encode --model " + model_with_text(std::string(2 << 20, ' ')) + " --input " +
                       cli_fixture("encode_post_relu_masks_input") + " --output " + out_path(),
                   "larger than the limit");
}

// Root cause 4: unbounded work from a number.
TEST_F(CliHostileInput, WorkIsBounded) {
  expect_bad_input(encode(model_with([](auto& c) { c["attention"]["boost"] = 1'000'000'000; })),
                   "boost: expected an integer <= 100");
  expect_bad_input("denoise --input " + picture() +
                       " --method gaussian --sigma-space 1 --boost 1000000000 --output " +
                       out_path(),
                   "boost");
  // T5 buckets are not tabulated up to max_distance.
  const CliRun run = run_cli_limited(
      mha("pos_t5") + " --num-heads 2 --position t5 --max-distance " + "1000000000000");
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

// Root cause 1 again, for options: sizes are held against memory before anything is allocated.
TEST_F(CliHostileInput, OptionSizesAreCheckedBeforeAllocation) {
  expect_bad_input("bench --len 1000000000 --repeat 1", "GiB");
  expect_bad_input("bench --embed 1000000 --repeat 1", "GiB");
  expect_bad_input(mha("pos_t5") + " --num-heads 2 --position t5 --num-buckets 100000000000",
                   "relative_attention_bias.weight");
  expect_bad_input("denoise --input " + picture() +
                       " --method nlm --radius 2 --patch-radius 1000 --output " + out_path(),
                   "--patch-radius: expected < 14 (the image's smaller side), got 1000");
  for (const std::string& radius : {k_int64_max, std::string("4611686018427387904")})
    expect_bad_input("denoise --input " + picture() + " --method nlm --radius 2 --patch-radius " +
                         radius + " --output " + out_path(),
                     "--patch-radius: expected < 14");
  // Oversized tiles are the whole problem: the same answer, not a huge workspace.
  for (const char* option : {"--key-block", "--query-tile"}) {
    const CliRun run =
        run_cli_limited(std::string("bench --len 64 --embed 32 --heads 2 --repeat 1 ") + option +
                        " " + k_int64_max);
    EXPECT_EQ(run.exit_code, 0) << run.output;
  }
}

// Root cause 5: limits of the filters' parameters give the limit's answer.
TEST_F(CliHostileInput, InfiniteWindowsAreTheGlobalWindow) {
  const Matrix<double> global =
      denoised("--method gaussian --sigma-space 1e300 --radius " + k_int64_max);
  const Matrix<double> image = testing::test_picture(14, 19, 11);
  // 8-bit PNG: the mean of the quantized pixels.
  const Matrix<double> quantized = (image * 255.0).array().round() / 255.0;
  ATTNLENS_EXPECT_CLOSE(global, Matrix<double>::Constant(14, 19, quantized.mean()), 1e-6);
  ATTNLENS_EXPECT_CLOSE(denoised("--method gaussian --sigma-space 1e300"), global, 1e-6);
  ATTNLENS_EXPECT_CLOSE(denoised("--method gaussian --sigma-space 1e300 --radius 100"), global,
                        1e-6);
}

TEST_F(CliHostileInput, VanishingBandwidthsAreTheIdentityFilter) {
  const Matrix<double> image = testing::test_picture(14, 19, 11);
  const Matrix<double> quantized = (image * 255.0).array().round() / 255.0;
  // nlm: only the pixel's own patch is at distance 0. bilateral: only pixels of the same
  // intensity weigh, so the average is that intensity.
  for (const char* args : {"--method nlm --radius 3 --patch-radius 1 --h 1e-300",
                           "--method bilateral --sigma-space 2 --sigma-range 1e-300"}) {
    SCOPED_TRACE(args);
    const Matrix<double> out = denoised(args);
    ATTNLENS_EXPECT_CLOSE(out, quantized, 1e-6);
  }
}

// Root cause 5: weights whose q.k overflows float before the 1/sqrt(d) (PyTorch scales q first
// and stays finite; tests/reference/oracles/mha.py checks that forming q.k first overflows).
TEST_F(CliHostileInput, LargeWeightsGivePyTorchsFiniteAnswer) {
  const CliRun run = run_cli_limited(mha("large_weights") + " --num-heads 2 --need-weights");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto expected = testing::load_fixture("cli/mha_large_weights_expected.safetensors");
  const auto actual = io::SafeTensors::load(out_path());
  const Tensor<float> output = expected.get<float>("output");
  const double size = Eigen::Map<const Vector<float>>(output.data(), output.size())
                          .cwiseAbs()
                          .cast<double>()
                          .maxCoeff();
  ASSERT_GT(size, 1e15);
  // Float precision relative to the output's size: q.k near 1e38 rounds at 1e31.
  ATTNLENS_EXPECT_CLOSE(actual.get<float>("output"), output, 1e-5 * size);
  ATTNLENS_EXPECT_CLOSE(actual.get<float>("weights"), expected.get<float>("weights"), 1e-5);
}

// Root cause 6: input the chosen mode does not read is an error, not ignored.
TEST_F(CliHostileInput, UnknownTensorsAndUnusedOptionsAreErrors) {
  const fs::path input = path("in.safetensors");
  {
    const auto fixture = io::SafeTensors::load(cli_fixture("mha_plain_input"));
    io::SafeTensorsWriter writer;
    writer.add("query", fixture.get<float>("query"));
    writer.add_bool("key_pading_mask", Tensor<std::uint8_t>({fixture.get<float>("query").dim(0),
                                                             fixture.get<float>("query").dim(1)}));
    writer.save(input.string());
  }
  expect_bad_input("mha --weights " + cli_fixture("mha_plain_weights") + " --input " +
                       input.string() + " --output " + out_path() + " --num-heads 2",
                   "unexpected tensor 'key_pading_mask'");
  {
    const auto fixture = io::SafeTensors::load(cli_fixture("mha_plain_weights"));
    io::SafeTensorsWriter writer;
    for (const auto& name : fixture.names()) writer.add(name, fixture.get<float>(name));
    writer.add("bias_k", Tensor<float>({1, 1, 4}));
    writer.save(path("weights.safetensors"));
  }
  expect_bad_input("mha --weights " + path("weights.safetensors") + " --input " +
                       cli_fixture("mha_plain_input") + " --output " + out_path() +
                       " --num-heads 2",
                   "unexpected tensor 'bias_k'");
  expect_bad_input(mha("plain") + " --num-heads 2 --num-buckets 16", "--num-buckets");
  expect_bad_input(mha("plain") + " --num-heads 2 --max-distance 16", "--max-distance");
  expect_bad_input(mha("plain") + " --num-heads 2 --position alibi --rope-base 100", "--rope-base");
  expect_bad_input("conv --input " + input.string() + " --output " + out_path(),
                   "unexpected tensor");
  // A check never reports success on NaN: a NaN pixel makes conv's output NaN, and --check
  // fails instead of folding the NaN away with max.
  {
    const auto fixture = io::SafeTensors::load(cli_fixture("conv_k3_input"));
    io::SafeTensorsWriter writer;
    for (const auto& name : fixture.names()) {
      Tensor<float> t = fixture.get<float>(name);
      if (name == "input") t.data()[t.size() / 2] = std::numeric_limits<float>::quiet_NaN();
      writer.add(name, t);
    }
    writer.save(path("nan.safetensors"));
  }
  expect_bad_input(
      "conv --input " + path("nan.safetensors") + " --output " + path("o.st") + " --check",
      "--check: expected a finite output, got a difference of nan");
}

// Root cause 7: messages name the argument and its value in a line a person reads.
TEST_F(CliHostileInput, MessagesAreShortAndNameTheArgument) {
  for (const char* option : {"--add-noise nan", "--h nan", "--h -1", "--h inf"}) {
    SCOPED_TRACE(option);
    const CliRun run =
        run_cli_limited("denoise --input " + picture() + " --method nlm --radius 2 --output " +
                        out_path() + " " + option);
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find("expected a finite number"), std::string::npos) << run.output;
    EXPECT_LT(run.output.size(), 200u) << run.output;  // no 309-digit bound
  }
  io::SafeTensorsWriter no_query;
  no_query.add_bool("key_padding_mask", Tensor<std::uint8_t>({1, 4}));
  no_query.save(path("no_query.safetensors"));
  expect_bad_input("mha --weights " + cli_fixture("mha_plain_weights") + " --input " +
                       path("no_query.safetensors") + " --output " + out_path() + " --num-heads 2",
                   "missing tensor 'query' in '" + path("no_query.safetensors") + "'");
}

TEST_F(CliHostileInput, InfoEscapesNamesAndReadsOnlyWhatTheHeaderClaims) {
  {
    io::SafeTensorsWriter writer;
    writer.add("a\nfake F32 [1]", Tensor<float>({1}));
    writer.save(out_path());
  }
  const CliRun run = run_cli_limited("info " + out_path());
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output, "a\\nfake F32 [1] F32 [1]\n");
  fs::remove(out_path());
  // An endless file: its first 8 bytes are the header length 0, an empty header.
  expect_bad_input("info /dev/zero", "not valid JSON");
}

}  // namespace
}  // namespace attnlens
