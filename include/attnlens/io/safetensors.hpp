// Reading and writing the safetensors format (8-byte little-endian header length, a JSON
// header, one flat data buffer): SafeTensors parses and validates a whole file and converts
// entries to Tensor<T>; SafeTensorsWriter builds a deterministic file from Tensor<T>s.
#pragma once

// API
//   enum class DType { F64, F32, F16, BF16, I64, I32, U8, BOOL };
//   std::string_view dtype_name(DType);           // "F64", "BF16", ...
//   std::size_t dtype_size(DType);                // bytes per element
//   struct TensorInfo { std::string name; DType dtype; Shape shape; std::size_t begin, end; };
//
//   class SafeTensors                             // a parsed file; owns its bytes
//     static SafeTensors load(const std::string& path);
//     static SafeTensors parse(std::string bytes);
//     std::vector<std::string> names() const;     // sorted
//     std::size_t size() const;                   // number of tensors
//     bool contains(const std::string& name) const;
//     const TensorInfo& info(const std::string& name) const;
//     const std::map<std::string, std::string>& metadata() const;
//     template <class T> Tensor<T> get(const std::string& name) const;
//
//   class SafeTensorsWriter
//     template <class T> void add(const std::string& name, const Tensor<T>& tensor);
//     void add_bool(const std::string& name, const Tensor<std::uint8_t>& tensor);
//     void set_metadata(const std::string& key, const std::string& value);
//     std::string bytes() const;
//     void save(const std::string& path) const;
//
// get<T> converts: float/double <- F64, F32, F16, BF16 (F16 and BF16 exactly; F64 -> float
// rounds to nearest, finite values beyond float's range become +-inf as in IEEE casts);
// int64_t/int32_t <- I64, I32 (narrowing is range-checked); uint8_t <- U8, BOOL (bytes must be
// 0 or 1). Anything else is an IoError naming the tensor, the accepted and the actual dtype.
//
// parse() follows the reference (Rust) implementation: every tensor's data_offsets must tile
// the data buffer (sorted by offset: no gap, no overlap, no trailing bytes), the header is at
// most 100 MB, unknown fields inside an entry are ignored. It is stricter in that dtypes other
// than the eight above (I8, U16, F8_*, ...), duplicate JSON keys, nesting deeper than the format
// needs and a null "__metadata__" are rejected. Every failure is an IoError; memory use is
// linear in the input size.
//
// The writer stores tensors sorted by name, in the header and in the buffer, and pads the
// header with spaces to a multiple of 8 bytes, so equal inputs give equal bytes.

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/io/json_text.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "attnlens/io/safetensors.hpp assumes a little-endian host");
#endif

namespace attnlens::io {

enum class DType { F64, F32, F16, BF16, I64, I32, U8, BOOL };

inline constexpr Named<DType> k_dtype_names[] = {
    {DType::F64, "F64"}, {DType::F32, "F32"}, {DType::F16, "F16"}, {DType::BF16, "BF16"},
    {DType::I64, "I64"}, {DType::I32, "I32"}, {DType::U8, "U8"},   {DType::BOOL, "BOOL"}};

inline std::string_view dtype_name(DType dtype) { return name_of(k_dtype_names, dtype); }

inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::U8:
    case DType::BOOL:
      return 1;
  }
  return 1;
}

// One entry of the header. begin and end are byte offsets into the data buffer (the bytes
// after the header), as in the file.
struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  std::size_t begin, end;
};

namespace detail {

using attnlens::detail::concat;
using attnlens::detail::shape_string;

// The reference implementation's limit; it keeps a corrupt length from driving allocation.
inline constexpr std::uint64_t k_max_header_bytes = 100'000'000;
// top-level object > tensor entry or metadata object > shape or data_offsets array
inline constexpr int k_max_json_levels = 3;
inline constexpr std::size_t k_length_bytes = 8;

inline bool parse_dtype(std::string_view text, DType& out) {
  for (const auto& entry : k_dtype_names)
    if (text == entry.name) {
      out = entry.value;
      return true;
    }
  return false;
}

template <class T>
T load_le(const unsigned char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

inline float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// IEEE binary16 -> binary32; every half value, NaN payloads included, is representable.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// bfloat16 is the upper half of a binary32.
inline float bf16_to_float(std::uint16_t b) {
  return bits_to_float(static_cast<std::uint32_t>(b) << 16);
}

// double -> T with IEEE round-to-nearest, written out for float so that finite values outside
// float's range (undefined behaviour for a plain cast in ISO C++) go to +-FLT_MAX or +-inf.
template <class T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    constexpr double max = static_cast<double>(std::numeric_limits<float>::max());
    constexpr double halfway_to_inf = 0x1.ffffffp127;  // FLT_MAX + half an ulp; ties go to inf
    constexpr float inf = std::numeric_limits<float>::infinity();
    if (v >= halfway_to_inf) return inf;
    if (v <= -halfway_to_inf) return -inf;
    if (v > max) return std::numeric_limits<float>::max();
    if (v < -max) return -std::numeric_limits<float>::max();
    return static_cast<float>(v);
  }
}

template <class T>
constexpr const char* scalar_name() {
  if constexpr (std::is_same_v<T, double>)
    return "double";
  else if constexpr (std::is_same_v<T, float>)
    return "float";
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return "int64";
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return "int32";
  else
    return "uint8";
}

template <class T>
constexpr bool is_safetensors_scalar =
    std::is_same_v<T, double> || std::is_same_v<T, float> || std::is_same_v<T, std::int64_t> ||
    std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::uint8_t>;

template <class T>
constexpr DType natural_dtype() {
  if constexpr (std::is_same_v<T, double>)
    return DType::F64;
  else if constexpr (std::is_same_v<T, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DType::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return DType::I32;
  else
    return DType::U8;
}

inline std::string errno_message(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// Reads a non-negative JSON integer. Returns false (and says why) for anything else.
inline bool read_unsigned(const nlohmann::json& value, std::uint64_t& out, const char*& why) {
  if (value.is_number_unsigned()) {
    out = value.get<std::uint64_t>();
    return true;
  }
  if (value.is_number_integer()) {
    const std::int64_t v = value.get<std::int64_t>();
    if (v < 0) {
      why = "negative";
      return false;
    }
    out = static_cast<std::uint64_t>(v);  // "-0"
    return true;
  }
  why = value.is_number() ? "not an integer" : "not a number";
  return false;
}

// "safetensors tensor '<name>'" in an error message; nothing is formatted until one is made.
struct TensorLabel {
  const std::string& name;
};
inline std::ostream& operator<<(std::ostream& out, const TensorLabel& label) {
  return out << "safetensors tensor '" << label.name << "'";
}

// A file opened for reading, closed when it goes out of scope.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path), file_(std::fopen(path.c_str(), "rb")) {
    if (!file_)
      throw IoError(concat("safetensors: cannot open '", path, "': ", errno_message(errno)));
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() { std::fclose(file_); }

  // The size of a regular file; none for a pipe or a device, whose size is not known before
  // they are read.
  std::optional<std::uint64_t> regular_size() const {
    struct stat status {};
    if (fstat(fileno(file_), &status) != 0 || !S_ISREG(status.st_mode)) return std::nullopt;
    return static_cast<std::uint64_t>(status.st_size);
  }

  // Appends up to `count` more bytes to `out`, fewer only at the end of the file. The buffer
  // grows with what arrives, so a count that the file does not back costs no memory.
  void append(std::uint64_t count, std::string& out) {
    char buffer[1 << 16];
    while (count > 0) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(count, sizeof buffer));
      const std::size_t got = std::fread(buffer, 1, want, file_);
      out.append(buffer, got);
      count -= got;
      if (got < want) break;
    }
    if (std::ferror(file_))
      throw IoError(concat("safetensors: cannot read '", path_, "': ", errno_message(errno)));
  }

 private:
  std::string path_;
  std::FILE* file_;
};

}  // namespace detail

class SafeTensors {
 public:
  // Reads only as many bytes as the header's length and data_offsets claim, each claim
  // checked first against the limit and, for a regular file, against the file's size.
  static SafeTensors load(const std::string& path) {
    detail::InputFile file(path);
    try {
      constexpr auto unknown = std::numeric_limits<std::uint64_t>::max();
      const std::optional<std::uint64_t> file_size = file.regular_size();
      const auto after = [&](std::size_t read) {
        return file_size ? std::max<std::uint64_t>(*file_size, read) - read : unknown;
      };
      SafeTensors st;
      file.append(detail::k_length_bytes, st.bytes_);
      if (st.bytes_.size() < detail::k_length_bytes) return parse(std::move(st.bytes_));
      const std::uint64_t header_length = check_header_length(st.bytes_, after(st.bytes_.size()));
      file.append(header_length, st.bytes_);
      if (st.bytes_.size() < detail::k_length_bytes + header_length)
        return parse(std::move(st.bytes_));  // says where the file ends

      const std::uint64_t data_size = after(st.bytes_.size());
      st.parse_entries(static_cast<std::size_t>(
          std::min<std::uint64_t>(data_size, std::numeric_limits<std::size_t>::max())));
      const std::size_t covered = st.covered_bytes();
      if (file_size && data_size != covered) trailing_bytes_error(data_size, covered);
      file.append(covered, st.bytes_);
      const std::size_t got = st.bytes_.size() - st.data_start_;
      if (got < covered)
        throw IoError(detail::concat("safetensors: the file ends after ", got, " of the ", covered,
                                     " data bytes the tensors' data_offsets cover"));
      std::string extra;
      file.append(1, extra);
      if (!extra.empty())
        throw IoError(detail::concat("safetensors: more bytes follow the ", covered,
                                     " bytes the tensors' data_offsets cover (trailing bytes)"));
      st.source_ = path;
      return st;
    } catch (const IoError& e) {
      throw IoError(detail::concat(e.what(), " (in '", path, "')"));
    }
  }

  static SafeTensors parse(std::string bytes) {
    SafeTensors st;
    st.bytes_ = std::move(bytes);
    st.parse_header();
    return st;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(infos_.size());
    for (const auto& entry : infos_) out.push_back(entry.first);
    return out;
  }

  std::size_t size() const { return infos_.size(); }

  bool contains(const std::string& name) const { return infos_.count(name) != 0; }

  const TensorInfo& info(const std::string& name) const {
    const auto it = infos_.find(name);
    if (it == infos_.end())
      throw IoError(detail::concat("safetensors: missing tensor '", name, "'", in_source()));
    return it->second;
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The path load() read, or empty for parse().
  const std::string& source() const { return source_; }

  template <class T>
  Tensor<T> get(const std::string& name) const {
    static_assert(detail::is_safetensors_scalar<T>,
                  "SafeTensors::get supports double, float, int64_t, int32_t and uint8_t");
    const TensorInfo& ti = info(name);
    const char* accepted = nullptr;
    bool ok = false;
    if constexpr (std::is_floating_point_v<T>) {
      accepted = "F64, F32, F16 or BF16";
      ok = ti.dtype == DType::F64 || ti.dtype == DType::F32 || ti.dtype == DType::F16 ||
           ti.dtype == DType::BF16;
    } else if constexpr (std::is_same_v<T, std::uint8_t>) {
      accepted = "U8 or BOOL";
      ok = ti.dtype == DType::U8 || ti.dtype == DType::BOOL;
    } else {
      accepted = "I64 or I32";
      ok = ti.dtype == DType::I64 || ti.dtype == DType::I32;
    }
    if (!ok)
      throw IoError(detail::concat("safetensors tensor '", name, "'", in_source(),
                                   ": expected dtype ", accepted, " for ", detail::scalar_name<T>(),
                                   ", got ", dtype_name(ti.dtype)));

    const std::size_t width = dtype_size(ti.dtype);
    const std::size_t n = (ti.end - ti.begin) / width;
    const auto* src =
        reinterpret_cast<const unsigned char*>(bytes_.data()) + data_start_ + ti.begin;
    typename Tensor<T>::Storage out(n);
    if (dtype_size(ti.dtype) == sizeof(T) && detail::natural_dtype<T>() == ti.dtype) {
      if (n > 0) std::memcpy(out.data(), src, n * sizeof(T));
    } else {
      convert<T>(ti, src, out);
    }
    return Tensor<T>(ti.shape, std::move(out));
  }

 private:
  SafeTensors() = default;

  std::string in_source() const { return source_.empty() ? "" : " in '" + source_ + "'"; }

  template <class T>
  static void convert(const TensorInfo& ti, const unsigned char* src,
                      typename Tensor<T>::Storage& out) {
    const std::size_t n = out.size();
    switch (ti.dtype) {
      case DType::F64:
        if constexpr (std::is_floating_point_v<T>)
          for (std::size_t i = 0; i < n; ++i)
            out[i] = detail::from_double<T>(detail::load_le<double>(src + 8 * i));
        break;
      case DType::F32:
        if constexpr (std::is_floating_point_v<T>)
          for (std::size_t i = 0; i < n; ++i)
            out[i] = static_cast<T>(detail::load_le<float>(src + 4 * i));
        break;
      case DType::F16:
        if constexpr (std::is_floating_point_v<T>)
          for (std::size_t i = 0; i < n; ++i)
            out[i] =
                static_cast<T>(detail::half_to_float(detail::load_le<std::uint16_t>(src + 2 * i)));
        break;
      case DType::BF16:
        if constexpr (std::is_floating_point_v<T>)
          for (std::size_t i = 0; i < n; ++i)
            out[i] =
                static_cast<T>(detail::bf16_to_float(detail::load_le<std::uint16_t>(src + 2 * i)));
        break;
      case DType::I64:
        if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
          for (std::size_t i = 0; i < n; ++i) {
            const auto v = detail::load_le<std::int64_t>(src + 8 * i);
            if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
              throw IoError(detail::concat("safetensors tensor '", ti.name, "': value ", v,
                                           " at element ", i, " does not fit in ",
                                           detail::scalar_name<T>()));
            out[i] = static_cast<T>(v);
          }
        }
        break;
      case DType::I32:
        if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
          for (std::size_t i = 0; i < n; ++i)
            out[i] = static_cast<T>(detail::load_le<std::int32_t>(src + 4 * i));
        break;
      case DType::U8:
      case DType::BOOL:
        if constexpr (std::is_same_v<T, std::uint8_t>) {
          for (std::size_t i = 0; i < n; ++i) {
            if (ti.dtype == DType::BOOL && src[i] > 1)
              throw IoError(detail::concat("safetensors tensor '", ti.name,
                                           "': BOOL byte at element ", i, " must be 0 or 1, got ",
                                           static_cast<int>(src[i])));
            out[i] = src[i];
          }
        }
        break;
    }
  }

  // The 8-byte header length at the start of `bytes`, checked against the format's limit and
  // the `available` bytes after it.
  static std::uint64_t check_header_length(const std::string& bytes, std::uint64_t available) {
    using detail::concat;
    const auto header_length =
        detail::load_le<std::uint64_t>(reinterpret_cast<const unsigned char*>(bytes.data()));
    if (header_length > detail::k_max_header_bytes)
      throw IoError(concat("safetensors: header length ", header_length, " exceeds the limit of ",
                           detail::k_max_header_bytes, " bytes"));
    if (header_length > available)
      throw IoError(concat("safetensors: header length ", header_length, " exceeds the ", available,
                           " bytes after the length field"));
    return header_length;
  }

  // Every entry ends inside the buffer, so a buffer that the entries do not tile exactly has
  // bytes after the last one.
  [[noreturn]] static void trailing_bytes_error(std::uint64_t data_size, std::size_t covered) {
    throw IoError(detail::concat("safetensors: data buffer has ", data_size,
                                 " bytes but the tensors' data_offsets cover only ", covered,
                                 " (trailing bytes)"));
  }

  void parse_header() {
    const std::size_t total = bytes_.size();
    if (total < detail::k_length_bytes)
      throw IoError(detail::concat("safetensors: file is ", total,
                                   " bytes, shorter than the 8-byte header length"));
    const auto header_size =
        static_cast<std::size_t>(check_header_length(bytes_, total - detail::k_length_bytes));
    const std::size_t data_size = total - detail::k_length_bytes - header_size;
    parse_entries(data_size);
    const std::size_t covered = covered_bytes();
    if (covered != data_size) trailing_bytes_error(data_size, covered);
  }

  // Reads the header's entries (bytes_ holds at least the length and the header), each checked
  // against a data buffer of `data_size` bytes.
  void parse_entries(std::size_t data_size) {
    const auto header_size = static_cast<std::size_t>(
        detail::load_le<std::uint64_t>(reinterpret_cast<const unsigned char*>(bytes_.data())));
    data_start_ = detail::k_length_bytes + header_size;
    const char* first = bytes_.data() + detail::k_length_bytes;
    const nlohmann::json header = parse_json_text(
        first, first + header_size, {"safetensors: header", detail::k_max_json_levels});
    if (!header.is_object())
      throw IoError(
          detail::concat("safetensors: header must be a JSON object, got ", header.type_name()));
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        read_metadata(value);
        continue;
      }
      infos_.emplace(key, read_entry(key, value, data_size));
    }
  }

  void read_metadata(const nlohmann::json& value) {
    using detail::concat;
    if (!value.is_object())
      throw IoError(concat("safetensors: __metadata__ must be an object of strings, got ",
                           value.type_name()));
    for (const auto& [k, v] : value.items()) {
      if (!v.is_string())
        throw IoError(concat("safetensors: __metadata__ value for key '", k,
                             "' must be a string, got ", v.type_name()));
      metadata_.emplace(k, v.get<std::string>());
    }
  }

  static TensorInfo read_entry(const std::string& name, const nlohmann::json& entry,
                               std::size_t data_size) {
    using detail::concat;
    const detail::TensorLabel who{name};  // formatted only when an error names it
    if (!entry.is_object())
      throw IoError(concat(who, ": entry must be an object, got ", entry.type_name()));

    TensorInfo ti{name, DType::F32, {}, 0, 0};

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) throw IoError(concat(who, ": missing \"dtype\""));
    if (!dtype_it->is_string())
      throw IoError(concat(who, ": dtype must be a string, got ", dtype_it->type_name()));
    const auto& dtype_text = dtype_it->get_ref<const std::string&>();
    if (!detail::parse_dtype(dtype_text, ti.dtype))
      throw IoError(concat(who, ": unknown or unsupported dtype '", dtype_text,
                           "' (supported: F64, F32, F16, BF16, I64, I32, U8, BOOL)"));

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) throw IoError(concat(who, ": missing \"shape\""));
    if (!shape_it->is_array())
      throw IoError(concat(who, ": shape must be an array, got ", shape_it->type_name()));
    constexpr auto max_extent = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
    std::uint64_t count = 1;
    ti.shape.reserve(shape_it->size());
    for (std::size_t axis = 0; axis < shape_it->size(); ++axis) {
      std::uint64_t extent = 0;
      const char* why = "";
      if (!detail::read_unsigned((*shape_it)[axis], extent, why))
        throw IoError(
            concat(who, ": shape entry ", axis, " is ", why, ": ", (*shape_it)[axis].dump()));
      if (extent > max_extent)
        throw IoError(
            concat(who, ": shape entry ", axis, " (", extent, ") overflows the index type"));
      // Like the reference, a running product that overflows is an error even if a later
      // extent is 0 (Tensor's shape check agrees).
      if (extent != 0 && count > max_extent / extent)
        throw IoError(
            concat(who, ": shape element count overflows at entry ", axis, " (", extent, ")"));
      count *= extent;
      ti.shape.push_back(static_cast<Index>(extent));
    }

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end()) throw IoError(concat(who, ": missing \"data_offsets\""));
    if (!offsets_it->is_array() || offsets_it->size() != 2)
      throw IoError(concat(who, ": data_offsets must be an array of two integers, got ",
                           offsets_it->is_array() ? concat("an array of ", offsets_it->size())
                                                  : std::string(offsets_it->type_name())));
    std::uint64_t offsets[2] = {0, 0};
    for (std::size_t k = 0; k < 2; ++k) {
      const char* why = "";
      if (!detail::read_unsigned((*offsets_it)[k], offsets[k], why))
        throw IoError(
            concat(who, ": data_offsets entry ", k, " is ", why, ": ", (*offsets_it)[k].dump()));
    }
    if (offsets[0] > offsets[1])
      throw IoError(concat(who, ": data_offsets begin ", offsets[0], " is after end ", offsets[1]));
    if (offsets[1] > data_size)
      throw IoError(concat(who, ": data_offsets end ", offsets[1], " is beyond the data buffer of ",
                           data_size, " bytes"));
    ti.begin = static_cast<std::size_t>(offsets[0]);
    ti.end = static_cast<std::size_t>(offsets[1]);

    const std::uint64_t width = dtype_size(ti.dtype);
    if (count > std::numeric_limits<std::uint64_t>::max() / width)
      throw IoError(
          concat(who, ": shape ", detail::shape_string(ti.shape), " byte size overflows"));
    if (offsets[1] - offsets[0] != count * width)
      throw IoError(concat(who, ": data_offsets [", offsets[0], ", ", offsets[1], "] span ",
                           offsets[1] - offsets[0], " bytes, but shape ",
                           detail::shape_string(ti.shape), " of ", dtype_name(ti.dtype), " needs ",
                           count, " x ", width, " bytes"));
    return ti;
  }

  // As in the reference implementation: sorted by (begin, end), the tensors must tile the
  // start of the data buffer, without gap or overlap; returns the bytes they cover.
  std::size_t covered_bytes() const {
    using detail::concat;
    std::vector<const TensorInfo*> order;
    order.reserve(infos_.size());
    for (const auto& entry : infos_) order.push_back(&entry.second);
    std::stable_sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::size_t expected = 0;
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* ti : order) {
      if (ti->begin != expected) {
        if (ti->begin < expected)
          throw IoError(concat("safetensors tensor '", ti->name, "': data_offsets [", ti->begin,
                               ", ", ti->end, "] overlap tensor '", previous->name, "' [",
                               previous->begin, ", ", previous->end, "]"));
        throw IoError(concat("safetensors tensor '", ti->name, "': data_offsets [", ti->begin, ", ",
                             ti->end, "] leave a gap: the previous tensor ends at offset ",
                             expected));
      }
      expected = ti->end;
      previous = ti;
    }
    return expected;
  }

  std::string bytes_;
  std::string source_;
  std::size_t data_start_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsWriter {
 public:
  // Stores a copy of the tensor under its natural dtype (double F64, float F32, int64_t I64,
  // int32_t I32, uint8_t U8).
  template <class T>
  void add(const std::string& name, const Tensor<T>& tensor) {
    static_assert(detail::is_safetensors_scalar<T>,
                  "SafeTensorsWriter::add supports double, float, int64_t, int32_t and uint8_t");
    add_raw(name, detail::natural_dtype<T>(), tensor.shape(), tensor.data(),
            static_cast<std::size_t>(tensor.size()), sizeof(T));
  }

  // Stores a 0/1 tensor as BOOL.
  void add_bool(const std::string& name, const Tensor<std::uint8_t>& tensor) {
    for (Index i = 0; i < tensor.size(); ++i)
      if (tensor.data()[i] > 1)
        throw ArgumentError(detail::concat("SafeTensorsWriter::add_bool '", name, "' element ", i,
                                           ": expected 0 or 1, got ",
                                           static_cast<int>(tensor.data()[i])));
    add_raw(name, DType::BOOL, tensor.shape(), tensor.data(),
            static_cast<std::size_t>(tensor.size()), 1);
  }

  // Sets one "__metadata__" entry; a later call with the same key replaces the value.
  void set_metadata(const std::string& key, const std::string& value) {
    require_utf8(key, "SafeTensorsWriter::set_metadata key");
    require_utf8(value, "SafeTensorsWriter::set_metadata value");
    metadata_[key] = value;
  }

  std::string bytes() const {
    // The header object is written member by member: entries_ is sorted and its names unique,
    // and an ordered_json object would look each name up in a list (quadratic in the count).
    std::string text = "{";
    const auto member = [&](const std::string& key, const nlohmann::ordered_json& value) {
      if (text.size() > 1) text += ',';
      text += nlohmann::json(key).dump() + ':' + value.dump();
    };
    if (!metadata_.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) meta[k] = v;
      member("__metadata__", meta);
    }
    std::size_t offset = 0;
    for (const auto& [name, entry] : entries_) {
      nlohmann::ordered_json info = nlohmann::ordered_json::object();
      info["dtype"] = std::string(dtype_name(entry.dtype));
      nlohmann::ordered_json shape = nlohmann::ordered_json::array();
      for (Index extent : entry.shape) shape.push_back(static_cast<std::uint64_t>(extent));
      info["shape"] = std::move(shape);
      info["data_offsets"] = {static_cast<std::uint64_t>(offset),
                              static_cast<std::uint64_t>(offset + entry.data.size())};
      offset += entry.data.size();
      member(name, info);
    }
    text += '}';
    text.append((8 - text.size() % 8) % 8, ' ');

    std::string out;
    out.reserve(detail::k_length_bytes + text.size() + offset);
    const auto length = static_cast<std::uint64_t>(text.size());
    char length_bytes[8];
    std::memcpy(length_bytes, &length, sizeof length);
    out.append(length_bytes, sizeof length_bytes);
    out += text;
    for (const auto& entry : entries_) out += entry.second.data;
    return out;
  }

  void save(const std::string& path) const {
    const std::string data = bytes();
    std::FILE* file = std::fopen(path.c_str(), "wb");
    if (!file)
      throw IoError(detail::concat("safetensors: cannot open '", path,
                                   "' for writing: ", detail::errno_message(errno)));
    const bool wrote = std::fwrite(data.data(), 1, data.size(), file) == data.size();
    const int write_error = errno;
    const bool closed = std::fclose(file) == 0;
    const int close_error = errno;
    if (!wrote || !closed)
      throw IoError(detail::concat("safetensors: cannot write '", path, "': ",
                                   detail::errno_message(wrote ? close_error : write_error)));
  }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::string data;
  };

  static void require_utf8(const std::string& text, const char* what) {
    try {
      (void)nlohmann::json(text).dump();
    } catch (const nlohmann::json::exception&) {
      throw ArgumentError(detail::concat(what, ": expected valid UTF-8, got invalid bytes"));
    }
  }

  void add_raw(const std::string& name, DType dtype, const Shape& shape, const void* data,
               std::size_t count, std::size_t width) {
    if (name == "__metadata__")
      throw ArgumentError(
          "SafeTensorsWriter::add name: expected a tensor name, got the "
          "reserved key '__metadata__'");
    require_utf8(name, "SafeTensorsWriter::add name");
    if (entries_.count(name))
      throw ArgumentError(
          detail::concat("SafeTensorsWriter::add name: expected a new name, got "
                         "duplicate '",
                         name, "'"));
    const Index expected = attnlens::detail::shape_size(shape, "SafeTensorsWriter::add shape");
    if (static_cast<std::size_t>(expected) != count)
      throw ShapeError(detail::concat("SafeTensorsWriter::add '", name, "': expected ", expected,
                                      " elements for shape ", detail::shape_string(shape), ", got ",
                                      count));
    Entry entry{dtype, shape, std::string()};
    if (count > 0) entry.data.assign(static_cast<const char*>(data), count * width);
    entries_.emplace(name, std::move(entry));
  }

  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace attnlens::io
