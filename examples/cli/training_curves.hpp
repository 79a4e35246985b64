// The loss and accuracy curves of a training run (docs/training.md, "Curves"): read from its
// metrics.jsonl, one JSON object per epoch as attnlens train appends them, and drawn as two
// panels, train and test, by io/line_plot.hpp. attnlens train redraws DIR/curves.png after
// every epoch; attnlens plot draws them again from any metrics.jsonl.
#pragma once

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/io/line_plot.hpp"

namespace attnlens::cli {

struct EpochMetrics {
  double epoch = 0;
  double train_loss = 0, train_accuracy = 0;  // accuracies as fractions, as in the file
  double test_loss = 0, test_accuracy = 0;
  double train_seconds = 0;  // the epoch's training time (0 when the line has none)
};

namespace detail_curves {

// A number of a metrics line; null (how JSON writes a NaN loss of a diverged run) is NaN.
inline double metric(const nlohmann::json& line, const char* key, const std::string& where) {
  const auto value = line.find(key);
  if (value != line.end() && value->is_number()) return value->get<double>();
  if (value != line.end() && value->is_null()) return std::nan("");
  throw IoError(detail::concat(where, ": '", key, "' ",
                               value == line.end() ? "is missing" : "is not a number"));
}

// One series of the curves: the epochs whose value is finite (a diverged epoch leaves a gap at
// the end rather than making the picture fail).
inline io::PlotSeries curve(const std::string& name, const std::vector<EpochMetrics>& epochs,
                            double EpochMetrics::*value, double scale, io::PlotMarker marker) {
  io::PlotSeries series;
  series.name = name;
  series.marker = marker;
  for (const EpochMetrics& epoch : epochs)
    if (std::isfinite(epoch.*value)) {
      series.x.push_back(epoch.epoch);
      series.y.push_back(scale * (epoch.*value));
    }
  return series;
}

inline io::LinePlot curves_panel(const std::string& title, const std::string& y_label,
                                 std::vector<io::PlotSeries> series) {
  io::LinePlot panel;
  panel.title = title;
  panel.x_label = "epoch";
  panel.y_label = y_label;
  for (io::PlotSeries& s : series)
    if (!s.x.empty()) panel.series.push_back(std::move(s));
  return panel;
}

}  // namespace detail_curves

// The epochs of a metrics.jsonl in order of their number. An epoch written twice (a run stopped
// after appending an epoch's line but before its checkpoint, then resumed) keeps its last line.
// Throws IoError naming the file and line for anything else than such lines.
inline std::vector<EpochMetrics> read_epoch_metrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError(detail::concat("metrics '", path, "': cannot open the file"));
  std::map<double, EpochMetrics> by_epoch;
  std::string text;
  for (long number = 1; std::getline(in, text); ++number) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = detail::concat("metrics '", path, "' line ", number);
    const nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions*/ false);
    if (!line.is_object()) throw IoError(where + ": not a JSON object");
    EpochMetrics epoch;
    epoch.epoch = detail_curves::metric(line, "epoch", where);
    epoch.train_loss = detail_curves::metric(line, "train_loss", where);
    epoch.train_accuracy = detail_curves::metric(line, "train_accuracy", where);
    epoch.test_loss = detail_curves::metric(line, "test_loss", where);
    epoch.test_accuracy = detail_curves::metric(line, "test_accuracy", where);
    if (line.contains("train_seconds"))
      epoch.train_seconds = detail_curves::metric(line, "train_seconds", where);
    if (!std::isfinite(epoch.epoch)) throw IoError(where + ": 'epoch' is not a finite number");
    by_epoch[epoch.epoch] = epoch;
  }
  if (in.bad()) throw IoError(detail::concat("metrics '", path, "': cannot read the file"));
  if (by_epoch.empty()) throw IoError(detail::concat("metrics '", path, "': no epochs in it"));
  std::vector<EpochMetrics> epochs;
  for (const auto& entry : by_epoch) epochs.push_back(entry.second);
  return epochs;
}

// Two panels: the mean cross-entropy and the accuracy in percent, train and test, per epoch.
inline std::vector<io::LinePlot> training_curve_panels(const std::vector<EpochMetrics>& epochs) {
  using detail_curves::curve;
  const auto circle = io::PlotMarker::circle, square = io::PlotMarker::square;
  std::vector<io::LinePlot> panels = {
      detail_curves::curves_panel("Loss", "cross-entropy",
                                  {curve("train", epochs, &EpochMetrics::train_loss, 1, circle),
                                   curve("test", epochs, &EpochMetrics::test_loss, 1, square)}),
      detail_curves::curves_panel(
          "Accuracy", "accuracy (%)",
          {curve("train", epochs, &EpochMetrics::train_accuracy, 100, circle),
           curve("test", epochs, &EpochMetrics::test_accuracy, 100, square)})};
  const char* quantities[] = {"loss", "accuracy"};
  for (std::size_t p = 0; p < panels.size(); ++p)
    if (panels[p].series.empty())
      throw IoError(
          detail::concat("training curves: no epoch has a finite ", quantities[p], " to draw"));
  return panels;
}

// Draws the curves of the metrics file at `metrics_path` into the PNG file `png_path`.
inline void write_training_curves(const std::string& metrics_path, const std::string& png_path,
                                  const io::LinePlotOptions& options = {}) {
  io::write_line_plot_png(png_path, training_curve_panels(read_epoch_metrics(metrics_path)),
                          options);
}

}  // namespace attnlens::cli
