// `attnlens mha --position` reaches every relative encoding of the registry: the Cauchy kernel,
// added to the registry alone, runs from the command line with its width read from --weights.
#include <gtest/gtest.h>

#include <string>

#include "support/cli_test.hpp"

namespace attnlens {
namespace {

using testing::CliRun;
using testing::run_cli;

class CliRegistry : public testing::CliTest {
 protected:
  std::string cauchy_args() const {
    return "mha --weights " + cli_fixture("mha_pos_cauchy_weights") + " --input " +
           cli_fixture("mha_pos_cauchy_input") + " --output " + out_path() +
           " --num-heads 4 --position cauchy";
  }
};

TEST_F(CliRegistry, CauchyFromTheRegistryMatchesPyTorch) {
  const CliRun run = run_cli(cauchy_args());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto expected = testing::load_fixture("cli/mha_pos_cauchy_expected.safetensors");
  ATTNLENS_EXPECT_CLOSE(io::SafeTensors::load(out_path()).get<float>("output"),
                        expected.get<float>("output"), 1e-5);
}

TEST_F(CliRegistry, SettingsAreCheckedAgainstTheEncoding) {
  expect_bad_input(cauchy_args() + " --num-buckets 8", "--num-buckets does not apply");
  expect_bad_input(cauchy_args() + " --position-option buckets=8", "its settings: width");
  expect_bad_input(cauchy_args() + " --position-option width=wide", "a finite number");
  expect_bad_input(cauchy_args() + " --position-option width", "KEY=VALUE");
  // The width is a parameter read from the file: without it, the tensor is named.
  expect_bad_input("mha --weights " + cli_fixture("mha_pos_rope_weights") + " --input " +
                       cli_fixture("mha_pos_rope_input") + " --output " + out_path() +
                       " --num-heads 2 --position cauchy",
                   "width");
}

}  // namespace
}  // namespace attnlens
