// attnlens plot --metrics DIR/metrics.jsonl --output curves.png: draws a training run's loss and
// accuracy curves again (attnlens train draws DIR/curves.png after every epoch), for instance
// in another size or from a copy of the metrics.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "cli/errors.hpp"
#include "cli/training_curves.hpp"

namespace attnlens::cli {

struct PlotArguments {
  std::string metrics, output;
  io::LinePlotOptions size;
};

inline void add_plot_command(CLI::App& app) {
  auto args = std::make_shared<PlotArguments>();
  CLI::App* cmd = app.add_subcommand(
      "plot", "Draw a training run's loss and accuracy curves as PNG (docs/training.md)");
  cmd->add_option("--metrics", args->metrics,
                  "metrics.jsonl of an attnlens train run (one JSON object per epoch)")
      ->required();
  cmd->add_option("--output", args->output, "The PNG file to write")->required();
  cmd->add_option("--width", args->size.width, "Width in pixels (the two panels share it)")
      ->default_val(args->size.width);
  cmd->add_option("--height", args->size.height, "Height in pixels")
      ->default_val(args->size.height);
  cmd->callback([args] {
    run_reporting_errors("plot",
                         [&] { write_training_curves(args->metrics, args->output, args->size); });
  });
}

}  // namespace attnlens::cli
