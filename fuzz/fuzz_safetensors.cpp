// libFuzzer target for attnlens/io/safetensors.hpp: any input must either parse or throw an
// attnlens exception, every tensor of a parsed file must convert or throw one, and a parsed
// file must survive a write/read round trip unchanged. Anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "attnlens/io/safetensors.hpp"

namespace {

using attnlens::io::DType;
using attnlens::io::SafeTensors;

template <class T>
void try_get(const SafeTensors& st, const std::string& name) {
  try {
    const attnlens::Tensor<T> t = st.get<T>(name);
    if (t.shape() != st.info(name).shape) __builtin_trap();
  } catch (const attnlens::IoError&) {
  } catch (const attnlens::ShapeError&) {
  } catch (const attnlens::ArgumentError&) {
  }
}

template <class T>
bool same_bytes(const attnlens::Tensor<T>& a, const attnlens::Tensor<T>& b) {
  if (a.shape() != b.shape() || a.size() != b.size()) return false;
  return a.size() == 0 ||
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(T)) == 0;
}

template <class T>
void add_copy(attnlens::io::SafeTensorsWriter& writer, const SafeTensors& st,
              const std::string& name) {
  writer.add(name, st.get<T>(name));
}

template <class T>
void check_same(const SafeTensors& before, const SafeTensors& after, const std::string& name) {
  if (!same_bytes(before.get<T>(name), after.get<T>(name))) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::optional<SafeTensors> parsed;
  try {
    parsed.emplace(SafeTensors::parse(std::string(reinterpret_cast<const char*>(data), size)));
  } catch (const attnlens::IoError&) {
    return 0;
  } catch (const attnlens::ShapeError&) {
    return 0;
  } catch (const attnlens::ArgumentError&) {
    return 0;
  }
  const SafeTensors& st = *parsed;
  for (const std::string& name : st.names()) {
    try_get<float>(st, name);
    try_get<double>(st, name);
    try_get<std::int64_t>(st, name);
    try_get<std::uint8_t>(st, name);
  }

  // Round trip: no exception is acceptable here, since the input was valid.
  attnlens::io::SafeTensorsWriter writer;
  for (const auto& [key, value] : st.metadata()) writer.set_metadata(key, value);
  for (const std::string& name : st.names()) {
    switch (st.info(name).dtype) {
      case DType::F64:
        add_copy<double>(writer, st, name);
        break;
      case DType::F32:
        add_copy<float>(writer, st, name);
        break;
      case DType::I64:
        add_copy<std::int64_t>(writer, st, name);
        break;
      case DType::I32:
        add_copy<std::int32_t>(writer, st, name);
        break;
      case DType::U8:
        add_copy<std::uint8_t>(writer, st, name);
        break;
      default:
        break;  // F16/BF16 are not written; BOOL may hold bytes other than 0/1
    }
  }
  const SafeTensors again = SafeTensors::parse(writer.bytes());
  if (again.metadata() != st.metadata()) __builtin_trap();
  for (const std::string& name : again.names()) {
    if (again.info(name).dtype != st.info(name).dtype) __builtin_trap();
    switch (st.info(name).dtype) {
      case DType::F64:
        check_same<double>(st, again, name);
        break;
      case DType::F32:
        check_same<float>(st, again, name);
        break;
      case DType::I64:
        check_same<std::int64_t>(st, again, name);
        break;
      case DType::I32:
        check_same<std::int32_t>(st, again, name);
        break;
      case DType::U8:
        check_same<std::uint8_t>(st, again, name);
        break;
      default:
        __builtin_trap();
    }
  }
  return 0;
}
