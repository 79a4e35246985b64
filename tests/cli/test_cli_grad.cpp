// `attnlens grad` on models exported by examples/export_pytorch.py from
// torch.nn.TransformerEncoders with key padding (tests/reference/data/cli/grad_*,
// tests/reference/oracles/gradients.py): every parameter's gradient and the input's reproduce
// torch.autograd on both engines, to the gradient tolerance (float 1e-4 relative, 1e-5 absolute;
// double 1e-9, 1e-10); bad input is one line and exit code 2.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "support/cli_test.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliGrad : public testing::CliTest {
 protected:
  static std::string model(const std::string& name) { return testing::fixture_path("cli/" + name); }
  static std::string file(const std::string& name, const std::string& part) {
    return testing::fixture_path("cli/" + name + "_" + part + ".safetensors");
  }

  template <class T>
  void check_against_autograd(const std::string& name, const std::string& engine) {
    SCOPED_TRACE(name + " on the " + engine + " engine");
    const auto expected = io::SafeTensors::load(file(name, "expected"));
    ASSERT_EQ(expected.metadata().at("double"), (std::is_same_v<T, double> ? "true" : "false"));
    const auto run =
        run_cli("grad --model " + model(name) + " --input " + file(name, "input") +
                " --grad-output " + file(name, "grad_output") + " --output " + out_path() +
                " --engine " + engine + (std::is_same_v<T, double> ? " --double" : ""));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto output = io::SafeTensors::load(out_path());
    EXPECT_EQ(output.names(), expected.names());
    for (const auto& key : expected.names()) {
      SCOPED_TRACE(key);
      ATTNLENS_EXPECT_GRADIENT_MATCHES(T, output.get<T>(key), expected.get<T>(key));
    }
  }
};

TEST_F(CliGrad, ExportedEncoderReproducesAutograd) {
  for (const std::string engine : {"reference", "fused"}) {
    check_against_autograd<float>("grad_post_relu_kpm", engine);
    check_against_autograd<double>("grad_pre_gelu_norm_kpm_mask_double", engine);
  }
}

TEST_F(CliGrad, BadInputIsOneLineAndExitCodeTwo) {
  const std::string name = "grad_post_relu_kpm";
  const std::string good = " --model " + model(name) + " --input " + file(name, "input");
  const std::string out = " --output " + out_path();
  io::SafeTensorsWriter wrong;
  wrong.add("output", Tensor<float>({1, 2, 3}));
  wrong.save(path("wrong.safetensors"));
  expect_bad_input("grad" + good + out + " --grad-output " + path("wrong.safetensors"), "output");
  io::SafeTensorsWriter extra;
  extra.add("outputs", Tensor<float>({1, 2, 3}));
  extra.save(path("extra.safetensors"));
  expect_bad_input("grad" + good + out + " --grad-output " + path("extra.safetensors"), "outputs");
  expect_bad_input("grad" + good + out + " --engine tiled", "--engine");
  expect_bad_input("grad" + good, "--output");
}

// Without --grad-output the upstream gradient is all ones: L = the sum of the output.
TEST_F(CliGrad, DefaultUpstreamGradientIsOnes) {
  const std::string name = "grad_post_relu_kpm";
  const auto run = run_cli("grad --model " + model(name) + " --input " + file(name, "input") +
                           " --output " + out_path());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto shape = io::SafeTensors::load(file(name, "grad_output")).get<float>("output").shape();
  Tensor<float> ones(shape);
  for (float& v : ones.storage()) v = 1.0f;
  io::SafeTensorsWriter dy;
  dy.add("output", ones);
  dy.save(path("ones.safetensors"));
  const auto explicit_run =
      run_cli("grad --model " + model(name) + " --input " + file(name, "input") +
              " --grad-output " + path("ones.safetensors") + " --output " + path("g.safetensors"));
  ASSERT_EQ(explicit_run.exit_code, 0) << explicit_run.output;
  const auto a = io::SafeTensors::load(out_path()),
             b = io::SafeTensors::load(path("g.safetensors"));
  for (const auto& key : b.names())
    ATTNLENS_EXPECT_CLOSE(a.get<float>(key), b.get<float>(key), 0.0);
}

}  // namespace
}  // namespace attnlens
