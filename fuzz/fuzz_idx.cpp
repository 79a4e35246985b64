// libFuzzer target for attnlens/io/idx.hpp: any input, plain or gzip, must either decode to an
// array whose shape accounts for its bytes, within the limit, or throw IoError; a decoded
// array must survive encode/decode unchanged, plain and compressed, and read as images or
// labels (with a class count) exactly when its dimensions and values say so.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "attnlens/io/idx.hpp"

namespace {

using attnlens::Index;
using attnlens::Tensor;

// Small enough that an input claiming the whole limit costs milliseconds, not seconds.
constexpr std::uint64_t k_fuzz_max_bytes = std::uint64_t{1} << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  attnlens::io::IdxReadOptions options;
  options.max_bytes = k_fuzz_max_bytes;
  std::optional<Tensor<std::uint8_t>> array;
  try {
    array.emplace(attnlens::io::decode_idx(bytes, "input", options));
  } catch (const attnlens::IoError&) {
    return 0;
  }
  if (static_cast<std::uint64_t>(array->size()) > k_fuzz_max_bytes) __builtin_trap();
  if (array->rank() < 1 || array->rank() > 255) __builtin_trap();

  // No exception is acceptable from here on: the input was valid.
  for (const bool gzip : {false, true}) {
    const std::string again = attnlens::io::encode_idx(*array, {gzip});
    if (!(attnlens::io::decode_idx(again, "again", options) == *array)) __builtin_trap();
  }
  if (array->rank() == 3 && !(attnlens::io::decode_idx_images(bytes, "input", options) == *array))
    __builtin_trap();
  if (array->rank() == 1) {
    const auto labels = attnlens::io::decode_idx_labels(bytes, "input", 0, options);
    if (static_cast<Index>(labels.size()) != array->size()) __builtin_trap();
    bool in_range = true;
    for (const Index label : labels) in_range = in_range && label >= 0 && label < 10;
    try {
      attnlens::io::decode_idx_labels(bytes, "input", 10, options);
      if (!in_range) __builtin_trap();
    } catch (const attnlens::IoError&) {
      if (in_range) __builtin_trap();
    }
  }
  return 0;
}
