// A GoogleTest base for tests of the attnlens tool: a fresh temporary directory per test, the
// paths of the committed CLI fixtures, and the check every bad input must pass (exit code 2,
// one line naming the problem, no output file).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "support/cli.hpp"
#include "support/fixtures.hpp"

namespace attnlens::testing {

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef ATTNLENS_CLI
    GTEST_SKIP() << "examples (the attnlens tool) are not built";
#endif
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("attnlens_" + std::string(info->test_suite_name()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // tests/reference/data/cli/<name>.safetensors
  static std::string cli_fixture(const std::string& name) {
    return fixture_path("cli/" + name + ".safetensors");
  }
  std::string path(const std::string& file) const { return (dir_ / file).string(); }
  std::string out_path() const { return path("out.safetensors"); }

  // Expects exit code 2, a one-line message containing `word`, and no output file, within the
  // limits of run_cli_limited.
  void expect_bad_input(const std::string& args, const std::string& word) const {
    SCOPED_TRACE(args);
    const CliRun run = run_cli_limited(args);
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find(word), std::string::npos) << run.output;
    EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
    EXPECT_FALSE(std::filesystem::exists(out_path()));
  }

  std::filesystem::path dir_;
};

}  // namespace attnlens::testing
