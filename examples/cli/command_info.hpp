// attnlens info FILE.safetensors: the names, dtypes and shapes of a file's tensors.
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "attnlens/io/safetensors.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

inline void add_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "List the tensors of a safetensors file");
  cmd->add_option("file", *path, "A .safetensors file")->required();
  cmd->callback([path] {
    run_reporting_errors("info", [&] {
      const auto file = io::SafeTensors::load(*path);
      for (const auto& [key, value] : file.metadata())
        std::cout << "metadata " << key << " = " << value << '\n';
      for (const auto& name : file.names()) {
        const auto& info = file.info(name);
        std::cout << name << ' ' << io::dtype_name(info.dtype) << ' '
                  << detail::shape_string(info.shape) << '\n';
      }
    });
  });
}

}  // namespace attnlens::cli
