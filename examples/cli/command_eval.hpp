// attnlens eval: a vision transformer's model directory (written by attnlens train) evaluated on
// Fashion-MNIST's test split, clean, under Gaussian noise or under an L-infinity FGSM or PGD
// attack, every length in pixel units (train/adversarial.hpp; docs/training.md, "Evaluating:
// accuracy under noise and attacks"): accuracy, loss, per-class accuracy and the confusion
// matrix, as a table or JSON.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/adversarial.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"
#include "cli/image_input.hpp"

namespace attnlens::cli {

struct EvalArguments {
  std::string model, data = io::k_fashion_mnist_directory, split = "test";
  std::string noise, corruption, attack, eps, step_size;  // lengths as given: "0.1" or "2/255"
  Index steps = 10, limit = 0, batch_size = 500;
  bool random_start = false, json = false;
  std::uint64_t seed = 0;
  int threads = 0;
  // The options given on the command line, to reject those the condition does not read.
  std::map<std::string, const CLI::Option*> given;
};

namespace detail_eval {

inline bool given(const EvalArguments& args, const std::string& name) {
  return args.given.at(name)->count() > 0;
}

// The condition the options describe; throws ArgumentError for options it does not read and
// for missing ones it needs.
inline PerturbationOptions perturbation(const EvalArguments& args) {
  const auto reject = [&](const std::string& option, const std::string& why) {
    if (given(args, option)) throw ArgumentError(option + " " + why);
  };
  const bool pgd = args.attack == "pgd";
  if (!given(args, "--attack")) reject("--eps", "needs --attack fgsm or pgd");
  if (!pgd) {
    const std::string why = "applies to --attack pgd only";
    reject("--steps", why);
    reject("--step-size", why);
    reject("--random-start", why);
  }
  if (!given(args, "--noise") && !given(args, "--corruption") && !args.random_start)
    reject("--seed", "needs --noise, --corruption or --random-start (it seeds their draws)");
  const char* one = "exclude each other: one condition per run";
  PerturbationOptions options;
  if (given(args, "--noise")) {
    reject("--attack", detail::concat("and --noise ", one));
    reject("--corruption", detail::concat("and --noise ", one));
    options = PerturbationOptions::noise(parse_pixel_length(args.noise, "--noise"), args.seed);
  } else if (given(args, "--corruption")) {
    reject("--attack", detail::concat("and --corruption ", one));
    options = parse_perturbation(args.corruption, "--corruption", args.seed);
    if (options.type != PerturbationType::corruption)
      throw ArgumentError(
          detail::concat("--corruption: expected noise:SIGMA, salt-and-pepper:FRACTION, "
                         "blur:SIGMA or contrast:FACTOR, got '",
                         args.corruption, "' (attacks: --attack)"));
  } else if (given(args, "--attack")) {
    if (!given(args, "--eps"))
      throw ArgumentError("--attack " + args.attack +
                          " needs --eps, the L-infinity radius in pixel units (e.g. --eps 2/255)");
    const double epsilon = parse_pixel_length(args.eps, "--eps");
    if (pgd) {
      const double step = given(args, "--step-size")
                              ? parse_pixel_length(args.step_size, "--step-size", true)
                              : 0.0;
      options = PerturbationOptions::pgd(epsilon, args.steps, step);
      options.random_start = args.random_start;
      options.seed = args.seed;
    } else {
      options = PerturbationOptions::fgsm(epsilon);
    }
  }
  check_perturbation_options(options);
  return options;
}

inline nlohmann::ordered_json condition_json(const PerturbationOptions& options) {
  nlohmann::ordered_json json{{"type", name_of(k_perturbation_names, options.type)},
                              {"label", perturbation_label(options)}};
  switch (options.type) {
    case PerturbationType::none:
      break;
    case PerturbationType::corruption: {
      const CorruptionOptions& c = options.corruption;
      json["corruption"] = name_of(k_corruption_names, c.type);
      switch (c.type) {
        case CorruptionType::none:
          break;
        case CorruptionType::salt_and_pepper:
          json["fraction"] = c.fraction;
          json["seed"] = c.seed;
          break;
        case CorruptionType::gaussian_blur:
          json["sigma"] = c.sigma;
          break;
        case CorruptionType::contrast:
          json["factor"] = c.factor;
          break;
        case CorruptionType::gaussian_noise:
          json["sigma"] = c.sigma;
          json["seed"] = c.seed;
          break;
      }
      break;
    }
    case PerturbationType::fgsm:
      json["epsilon"] = options.epsilon;
      break;
    case PerturbationType::pgd:
      json["epsilon"] = options.epsilon;
      json["steps"] = options.steps;
      json["step_size"] = pgd_step_size(options);
      json["random_start"] = options.random_start;
      if (options.random_start) json["seed"] = options.seed;
      break;
  }
  return json;
}

inline void print_table(const ImageDataset<float>& data, const ClassifierEvaluation& result) {
  const Index classes = result.confusion.rows();
  const auto name = [&](Index c) {
    const std::string label = c < static_cast<Index>(data.class_names.size())
                                  ? detail::concat(c, " ", data.class_names[c])
                                  : std::to_string(c);
    return label.substr(0, 14);
  };
  const std::vector<double> accuracies = result.class_accuracies();
  std::printf("\n%-14s %7s %9s\n", "class", "images", "accuracy");
  for (Index c = 0; c < classes; ++c)
    std::printf("%-14s %7ld %8.2f%%\n", name(c).c_str(),
                static_cast<long>(result.confusion.row(c).sum()),
                100 * accuracies[static_cast<std::size_t>(c)]);
  std::printf("\nconfusion matrix (rows: label, columns: predicted class)\n%-14s", "");
  for (Index c = 0; c < classes; ++c) std::printf(" %5ld", static_cast<long>(c));
  std::printf("\n");
  for (Index r = 0; r < classes; ++r) {
    std::printf("%-14s", name(r).c_str());
    for (Index c = 0; c < classes; ++c)
      std::printf(" %5ld", static_cast<long>(result.confusion(r, c)));
    std::printf("\n");
  }
}

inline void run(const EvalArguments& args) {
  const PerturbationOptions options = perturbation(args);
  const io::VitModelConfig config = io::load_vit_config(args.model);
  const VisionTransformerOptions& o = config.vit;
  if (o.num_classes == 0)
    throw ArgumentError(detail::concat("--model: '", args.model,
                                       "' has no head (num_classes 0): it computes features, not "
                                       "classes"));
  if (o.in_chans != 1 || o.image_height != io::k_fashion_mnist_side ||
      o.image_width != io::k_fashion_mnist_side)
    throw ArgumentError(detail::concat("--model: '", args.model, "' takes ", o.in_chans, " x ",
                                       o.image_height, " x ", o.image_width,
                                       " images; Fashion-MNIST's are 1 x 28 x 28"));
  const VisionTransformer<float> model = io::load_vit_model<float>(args.model);
  io::FashionMnistOptions data_options;
  data_options.directory = args.data;  // pixels in [0, 1]: the condition acts before normalizing
  const ImageDataset<float> data = first_examples(
      io::load_fashion_mnist<float>(
          value_named(io::k_fashion_mnist_split_names, args.split, "--split"), data_options),
      args.limit);
  const PixelClassifier<float> classifier{model, vit_normalization(config), {args.threads}};

  const auto start = std::chrono::steady_clock::now();
  const ClassifierEvaluation result =
      evaluate_perturbed(classifier, data, options, args.batch_size);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const Index correct = result.confusion.trace();

  if (args.json) {
    nlohmann::ordered_json classes = nlohmann::ordered_json::array();
    const std::vector<double> accuracies = result.class_accuracies();
    for (Index c = 0; c < result.confusion.rows(); ++c) {
      nlohmann::ordered_json item{{"class", c}};
      if (c < static_cast<Index>(data.class_names.size())) item["name"] = data.class_names[c];
      item["images"] = result.confusion.row(c).sum();
      item["correct"] = result.confusion(c, c);
      item["accuracy"] = accuracies[static_cast<std::size_t>(c)];
      classes.push_back(item);
    }
    nlohmann::ordered_json confusion = nlohmann::ordered_json::array();
    for (Index r = 0; r < result.confusion.rows(); ++r) {
      const auto row = result.confusion.row(r);
      confusion.push_back(std::vector<Index>(row.data(), row.data() + row.size()));
    }
    const nlohmann::ordered_json json{{"model", args.model},
                                      {"dataset", "fashion-mnist"},
                                      {"split", args.split},
                                      {"images", data.size()},
                                      {"condition", condition_json(options)},
                                      {"accuracy", result.accuracy},
                                      {"correct", correct},
                                      {"loss", result.loss},
                                      {"classes", classes},
                                      {"confusion", confusion},
                                      {"seconds", seconds}};
    std::printf("%s\n", json.dump(2).c_str());
    return;
  }
  std::printf("eval %s: %ld Fashion-MNIST %s images, %s\n", args.model.c_str(),
              static_cast<long>(data.size()), args.split.c_str(),
              perturbation_label(options).c_str());
  std::printf("accuracy %.2f%% (%ld of %ld), loss %.4f, %.1f s\n", 100 * result.accuracy,
              static_cast<long>(correct), static_cast<long>(data.size()), result.loss, seconds);
  print_table(data, result);
}

}  // namespace detail_eval

inline void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArguments>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Test accuracy of a vision transformer on Fashion-MNIST, clean, under Gaussian noise or "
      "another corruption, or under an FGSM / PGD attack (docs/training.md)");
  auto& given = args->given;
  cmd->add_option("--model", args->model,
                  "ViT model directory: config.json (with the mean and std that normalize the "
                  "[0, 1] images) and model.safetensors, e.g. a run's best/")
      ->required();
  given["--noise"] = cmd->add_option("--noise", args->noise,
                                     "Add Gaussian noise of standard deviation SIGMA in pixel "
                                     "units (0.1, or 25/255), clamped to [0, 1]")
                         ->type_name("SIGMA");
  given["--corruption"] =
      cmd->add_option("--corruption", args->corruption,
                      "Corrupt the images (image/corruption.hpp, docs/data.md): "
                      "salt-and-pepper:FRACTION, blur:SIGMA (pixels), contrast:FACTOR or "
                      "noise:SIGMA, e.g. salt-and-pepper:0.05")
          ->type_name("NAME:VALUE");
  given["--attack"] = cmd->add_option("--attack", args->attack,
                                      "L-infinity attack on the cross-entropy: fgsm or pgd")
                          ->check(CLI::IsMember(std::vector<std::string>{"fgsm", "pgd"}));
  given["--eps"] = cmd->add_option("--eps", args->eps,
                                   "The attack's radius in pixel units (2/255: two grey levels)")
                       ->type_name("E");
  given["--steps"] = cmd->add_option("--steps", args->steps, "PGD's steps K (default 10)")
                         ->check(k_positive_number);
  given["--step-size"] = cmd->add_option("--step-size", args->step_size,
                                         "PGD's step in pixel units (default 2.5 E / K)")
                             ->type_name("A");
  given["--random-start"] =
      cmd->add_flag("--random-start", args->random_start,
                    "PGD starts at a uniform draw from the E ball (default: at the image)");
  given["--seed"] = cmd->add_option("--seed", args->seed,
                                    "Seed of the noise, of salt and pepper or of PGD's random "
                                    "start (default 0); "
                                    "image i draws from its own stream i");
  cmd->add_option("--data", args->data,
                  "Directory of the Fashion-MNIST files (default Debian's dataset-fashion-mnist)");
  cmd->add_option("--split", args->split, "test or train")
      ->check(CLI::IsMember(names_of(io::k_fashion_mnist_split_names)));
  cmd->add_option("--limit", args->limit, "Only the first N images (0: all)")
      ->check(k_non_negative_number);
  cmd->add_option("--batch-size", args->batch_size, "Images per batch (default 500)")
      ->check(k_positive_number);
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(k_non_negative_number);
  cmd->add_flag("--json", args->json,
                "Print JSON: the condition, accuracy, loss, per-class accuracy, confusion matrix");
  cmd->callback([args] { run_reporting_errors("eval", [&] { detail_eval::run(*args); }); });
}

}  // namespace attnlens::cli
