// attnlens info FILE.safetensors: the names, dtypes and shapes of a file's tensors, one line
// each, names escaped.
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "attnlens/io/safetensors.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

namespace detail_info {

// `text` with control bytes and backslashes escaped (\n, \t, \x1b, \\): a tensor name or
// metadata string holding a newline must not print as a line of its own.
inline std::string escaped(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      const char* digits = "0123456789abcdef";
      out += {'\\', 'x', digits[c >> 4], digits[c & 15]};
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace detail_info

inline void add_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "List the tensors of a safetensors file");
  cmd->add_option("file", *path, "A .safetensors file")->required();
  cmd->callback([path] {
    run_reporting_errors("info", [&] {
      const auto file = io::SafeTensors::load(*path);
      using detail_info::escaped;
      for (const auto& [key, value] : file.metadata())
        std::cout << "metadata " << escaped(key) << " = " << escaped(value) << '\n';
      for (const auto& name : file.names()) {
        const auto& info = file.info(name);
        std::cout << escaped(name) << ' ' << io::dtype_name(info.dtype) << ' '
                  << detail::shape_string(info.shape) << '\n';
      }
    });
  });
}

}  // namespace attnlens::cli
