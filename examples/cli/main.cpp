// attnlens: check attnlens against PyTorch on your own weights, from the command line.
// Each subcommand lives in a header of its own next to this file.
#include <CLI/CLI.hpp>
#include <iostream>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "cli/command_attribute.hpp"
#include "cli/command_bench.hpp"
#include "cli/command_classify.hpp"
#include "cli/command_conv.hpp"
#include "cli/command_denoise.hpp"
#include "cli/command_encode.hpp"
#include "cli/command_eval.hpp"
#include "cli/command_grad.hpp"
#include "cli/command_info.hpp"
#include "cli/command_locality.hpp"
#include "cli/command_maps.hpp"
#include "cli/command_mha.hpp"
#include "cli/command_plot.hpp"
#include "cli/command_prune.hpp"
#include "cli/command_study.hpp"
#include "cli/command_train.hpp"
#include "cli/command_tree.hpp"
#include "cli/command_trigger.hpp"
#include "cli/errors.hpp"

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  // Large buffers (a training step's activations and gradients) stay in the process when they
  // are freed, instead of being unmapped and faulted in again, zeroed, on the next step: that
  // was an eighth of a training run's time (PyTorch's allocator keeps them too).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  CLI::App app{"attnlens: self-attention as kernel smoothing, on Eigen"};
  app.require_subcommand(1);
  attnlens::cli::add_attribute_command(app);
  attnlens::cli::add_bench_command(app);
  attnlens::cli::add_classify_command(app);
  attnlens::cli::add_conv_command(app);
  attnlens::cli::add_denoise_command(app);
  attnlens::cli::add_encode_command(app);
  attnlens::cli::add_eval_command(app);
  attnlens::cli::add_grad_command(app);
  attnlens::cli::add_info_command(app);
  attnlens::cli::add_locality_command(app);
  attnlens::cli::add_maps_command(app);
  attnlens::cli::add_mha_command(app);
  attnlens::cli::add_plot_command(app);
  attnlens::cli::add_prune_command(app);
  attnlens::cli::add_study_command(app);
  attnlens::cli::add_train_command(app);
  attnlens::cli::add_tree_command(app);
  attnlens::cli::add_trigger_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // Usage errors are one line and exit 2, like every other bad input.
    std::cerr << "attnlens: error: " << e.what() << " (see --help)\n";
    return attnlens::cli::k_exit_bad_input;
  } catch (const std::exception& e) {  // the subcommands report their own errors
    std::cerr << "attnlens: internal error: " << e.what() << '\n';
    return attnlens::cli::k_exit_internal_error;
  }
  return 0;
}
