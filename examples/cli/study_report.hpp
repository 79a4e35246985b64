// The results of `attnlens study` (docs/experiments.md): DIR/results.csv, one row per model x
// seed x condition, appended as each evaluation finishes (so a stopped study keeps every row it
// finished); DIR/summary.md, the mean +- standard deviation over seeds as Markdown tables; and
// a plot, one line per model with error bars: DIR/robustness.png, accuracy against the strength
// of the noise and of each attack (Fashion-MNIST), or DIR/accuracy-by-length.png, accuracy
// against the length of the expressions (ListOps).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <locale>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/io/line_plot.hpp"
#include "cli/study_config.hpp"

namespace attnlens::cli {

struct StudyRow {
  std::string model;
  std::uint64_t seed = 0;
  std::string condition;  // StudyCondition::text
  Index images = 0;
  double accuracy = 0;  // a fraction
  double loss = 0;      // the mean cross-entropy
  double eval_seconds = 0, train_seconds = 0;
};

inline constexpr const char* k_study_csv_header =
    "model,seed,condition,images,accuracy,loss,eval_seconds,train_seconds";

namespace detail_study {

inline std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, ',')) fields.push_back(field);
  if (!line.empty() && line.back() == ',') fields.emplace_back();
  return fields;
}

template <class V>
V csv_number(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  in.imbue(std::locale::classic());
  V value{};
  if (text.empty() || !(in >> value) || in.peek() != std::char_traits<char>::eof())
    throw IoError(detail::concat(where, ": expected a number, got '", text, "'"));
  return value;
}

}  // namespace detail_study

// The rows of results.csv. A last line without its newline (the process stopped while writing
// it) is left out; any other malformed line is an IoError naming it.
inline std::vector<StudyRow> read_study_results(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  const std::string text(std::istreambuf_iterator<char>(in), {});
  std::vector<StudyRow> rows;
  std::size_t start = 0;
  for (long number = 1;; ++number) {
    const std::size_t end = text.find('\n', start);
    if (end == std::string::npos) break;  // nothing, or an unfinished last line
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    const std::string where = detail::concat("'", path, "' line ", number);
    if (number == 1) {
      if (line != k_study_csv_header)
        throw IoError(detail::concat(where, ": expected the header '", k_study_csv_header,
                                     "', got '", line.substr(0, 200), "'"));
      continue;
    }
    const std::vector<std::string> f = detail_study::split_csv_line(line);
    if (f.size() != 8) throw IoError(detail::concat(where, ": expected 8 fields, got ", f.size()));
    StudyRow row;
    row.model = f[0];
    row.seed = detail_study::csv_number<std::uint64_t>(f[1], where);
    row.condition = f[2];
    row.images = detail_study::csv_number<Index>(f[3], where);
    row.accuracy = detail_study::csv_number<double>(f[4], where);
    row.loss = detail_study::csv_number<double>(f[5], where);
    row.eval_seconds = detail_study::csv_number<double>(f[6], where);
    row.train_seconds = detail_study::csv_number<double>(f[7], where);
    rows.push_back(std::move(row));
  }
  return rows;
}

// Cuts a last line that lacks its newline (the process stopped while writing it) off the file, so
// that the next row does not continue it.
inline void drop_unfinished_row(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  const std::string text(std::istreambuf_iterator<char>(in), {});
  in.close();
  if (text.empty() || text.back() == '\n') return;
  const std::size_t keep = text.rfind('\n');
  std::error_code error;
  std::filesystem::resize_file(path, keep == std::string::npos ? 0 : keep + 1, error);
  if (error) throw IoError(detail::concat("cannot repair '", path, "': ", error.message()));
}

// Appends one row (and the header to a new file) in one write, flushed.
inline void append_study_row(const std::string& path, const StudyRow& row) {
  std::ifstream existing(path, std::ios::binary);
  const bool fresh = !existing || existing.peek() == std::char_traits<char>::eof();
  existing.close();
  char numbers[160];
  std::snprintf(numbers, sizeof numbers, "%ld,%.17g,%.17g,%.3f,%.3f", static_cast<long>(row.images),
                row.accuracy, row.loss, row.eval_seconds, row.train_seconds);
  const std::string text =
      detail::concat(fresh ? std::string(k_study_csv_header) + "\n" : std::string(), row.model, ",",
                     row.seed, ",", row.condition, ",", numbers, "\n");
  std::ofstream out(path, std::ios::binary | std::ios::app);
  out << text;
  if (!out.flush()) throw IoError(detail::concat("cannot append to '", path, "'"));
}

// Mean and sample standard deviation (n - 1; 0 for one value) of a cell's values.
struct StudyStatistic {
  double mean = 0, std = 0;
  std::size_t count = 0;
};

inline StudyStatistic study_statistic(const std::vector<double>& values) {
  StudyStatistic s;
  s.count = values.size();
  if (values.empty()) return s;
  for (const double v : values) s.mean += v;
  s.mean /= static_cast<double>(values.size());
  if (values.size() > 1) {
    double squares = 0;
    for (const double v : values) squares += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(squares / static_cast<double>(values.size() - 1));
  }
  return s;
}

// The accuracies (in percent) of one model under one condition, over the study's seeds found.
inline std::vector<double> study_accuracies(const StudyConfig& study,
                                            const std::vector<StudyRow>& rows,
                                            const std::string& model,
                                            const std::string& condition) {
  std::map<std::uint64_t, double> by_seed;  // a row written twice counts once
  for (const StudyRow& row : rows)
    if (row.model == model && row.condition == condition &&
        std::find(study.seeds.begin(), study.seeds.end(), row.seed) != study.seeds.end())
      by_seed[row.seed] = 100 * row.accuracy;
  std::vector<double> values;
  for (const auto& entry : by_seed) values.push_back(entry.second);
  return values;
}

namespace detail_study {

inline constexpr const char* k_listops_group = "ListOps accuracy by length";

// The group a condition's column goes to.
inline std::string condition_group(const StudyConfig& study, const StudyCondition& c) {
  if (study.task == StudyTask::listops) return k_listops_group;
  switch (c.options.type) {
    case PerturbationType::none:
    case PerturbationType::corruption:
      return "Clean and corrupted test images";
    case PerturbationType::fgsm:
      return "FGSM";
    case PerturbationType::pgd:
      return detail::concat("PGD-", c.options.steps);
  }
  return "";
}

struct PlotAxis {
  std::string title, x_label;
  double x = 0;  // the condition's strength on it
};

// Where a condition is drawn, if anywhere: a length bucket at its midpoint; Gaussian noise
// against sigma, each attack against epsilon in grey levels ("clean" is the point 0 of each of
// these panels; blur, contrast and salt and pepper have one strength each in a study).
inline bool plot_axis(const StudyConfig& study, const StudyCondition& c, PlotAxis& axis) {
  if (study.task == StudyTask::listops) {
    axis = {k_listops_group, "length in tokens (bucket midpoint)",
            0.5 * static_cast<double>(c.min_length + c.max_length)};
    return c.length_bucket();
  }
  const PerturbationOptions& o = c.options;
  if (o.type == PerturbationType::corruption &&
      o.corruption.type == CorruptionType::gaussian_noise) {
    axis = {"Gaussian noise", "sigma (pixels in [0, 1])", o.corruption.sigma};
    return true;
  }
  if (o.type == PerturbationType::fgsm || o.type == PerturbationType::pgd) {
    axis = {condition_group(study, c), "epsilon (grey levels of 255)", 255 * o.epsilon};
    return true;
  }
  return false;
}

inline std::string cell_text(const StudyStatistic& s, std::size_t seeds) {
  if (s.count == 0) return "";
  char text[64];
  std::snprintf(text, sizeof text, "%.2f ± %.2f", s.mean, s.std);
  return s.count == seeds ? std::string(text) : detail::concat(text, " (n=", s.count, ")");
}

}  // namespace detail_study

// DIR/summary.md: per group of conditions a table, models x conditions, of the accuracy in
// percent as mean ± std over the seeds found (n given where fewer than the study's), and the
// mean training time per run.
inline std::string study_summary_markdown(const StudyConfig& study,
                                          const std::vector<StudyRow>& rows) {
  using detail::concat;
  std::ostringstream md;
  md << "# Study results\n\n"
     << "Test accuracy on " << (study.task == StudyTask::listops ? "ListOps" : "Fashion-MNIST")
     << " in percent, mean ± sample standard deviation over " << study.seeds.size() << " seed"
     << (study.seeds.size() > 1 ? "s" : "") << " (n: the seeds finished when fewer). "
     << (study.task == StudyTask::listops
             ? std::string("`all` is the whole held-out test set, `length:A-B` its expressions "
                           "of A to B tokens (results.csv's `images` counts them).")
             : concat("Attacks run on the first ",
                      study.attack_images > 0 ? concat(study.attack_images, " test images")
                                              : std::string("every test image"),
                      ", the other conditions on the whole test split."))
     << " Written by `attnlens study` from results.csv.\n";
  std::vector<std::string> groups;
  for (const StudyCondition& c : study.conditions) {
    const std::string group = detail_study::condition_group(study, c);
    if (std::find(groups.begin(), groups.end(), group) == groups.end()) groups.push_back(group);
  }
  for (const std::string& group : groups) {
    md << "\n## " << group << "\n\n| model |";
    std::vector<const StudyCondition*> columns;
    for (const StudyCondition& c : study.conditions)
      if (detail_study::condition_group(study, c) == group) {
        columns.push_back(&c);
        md << " " << c.text << " |";
      }
    md << "\n|---|";
    for (std::size_t i = 0; i < columns.size(); ++i) md << "---:|";
    md << "\n";
    for (const StudyModel& model : study.models) {
      md << "| " << model.name << " |";
      for (const StudyCondition* c : columns)
        md << " "
           << detail_study::cell_text(
                  study_statistic(study_accuracies(study, rows, model.name, c->text)),
                  study.seeds.size())
           << " |";
      md << "\n";
    }
  }
  md << "\n## Training time\n\n| model | runs | minutes per run |\n|---|---:|---:|\n";
  for (const StudyModel& model : study.models) {
    std::map<std::uint64_t, double> seconds;
    for (const StudyRow& row : rows)
      if (row.model == model.name) seconds[row.seed] = row.train_seconds;
    std::vector<double> minutes;
    for (const auto& entry : seconds) minutes.push_back(entry.second / 60);
    const StudyStatistic s = study_statistic(minutes);
    char text[64];
    std::snprintf(text, sizeof text, "%.1f", s.mean);
    md << "| " << model.name << " | " << s.count << " | " << (s.count ? text : "") << " |\n";
  }
  return md.str();
}

// The study's plot, in DIR.
inline std::string study_plot_file(const StudyConfig& study) {
  return study.task == StudyTask::listops ? "accuracy-by-length.png" : "robustness.png";
}

// The panels of the study's plot: one per kind of graded condition (Gaussian noise, FGSM, PGD-K
// with clean at 0; ListOps's length buckets), accuracy against the condition's place on its axis,
// one series per model with error bars of one standard deviation. Empty when the study has no
// graded condition with results.
inline std::vector<io::LinePlot> study_plot_panels(const StudyConfig& study,
                                                   const std::vector<StudyRow>& rows) {
  std::vector<io::LinePlot> panels;
  const StudyCondition* clean = nullptr;
  for (const StudyCondition& c : study.conditions)
    if (study.task == StudyTask::fashion_mnist && c.options.type == PerturbationType::none)
      clean = &c;
  for (const StudyCondition& c : study.conditions) {
    detail_study::PlotAxis axis;
    if (!detail_study::plot_axis(study, c, axis)) continue;
    const bool seen = std::any_of(panels.begin(), panels.end(),
                                  [&](const io::LinePlot& p) { return p.title == axis.title; });
    if (seen) continue;
    io::LinePlot panel;
    panel.title = axis.title;
    panel.x_label = axis.x_label;
    panel.y_label = "test accuracy (%)";
    for (const StudyModel& model : study.models) {
      std::vector<std::pair<double, StudyStatistic>> points;
      for (const StudyCondition& d : study.conditions) {
        detail_study::PlotAxis other;
        const bool on_panel = (&d == clean) || (detail_study::plot_axis(study, d, other) &&
                                                other.title == axis.title);
        if (!on_panel) continue;
        const StudyStatistic s = study_statistic(study_accuracies(study, rows, model.name, d.text));
        if (s.count > 0) points.emplace_back(&d == clean ? 0.0 : other.x, s);
      }
      if (points.empty()) continue;
      std::sort(points.begin(), points.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      io::PlotSeries series;
      series.name = model.name;
      series.marker = io::PlotMarker::circle;
      for (const auto& [x, s] : points) {
        series.x.push_back(x);
        series.y.push_back(s.mean);
        series.y_error.push_back(s.std);
      }
      panel.series.push_back(std::move(series));
    }
    if (!panel.series.empty()) panels.push_back(std::move(panel));
  }
  return panels;
}

}  // namespace attnlens::cli
