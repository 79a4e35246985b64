// IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic (two zero bytes, the data
// type, the number of dimensions), one big-endian uint32 extent per dimension, then the data in
// row-major order. attnlens reads and writes unsigned-byte data (type 0x08): images are
// 0x00000803 (N x rows x cols), labels 0x00000801 (N). A file may be gzip-compressed (told by
// its first bytes, 1f 8b), inflated with zlib. Every size is checked before it is allocated;
// every failure is an IoError naming the file. Link zlib (the CMake target attnlens::data).
#pragma once

// API
//   struct IdxReadOptions { std::uint64_t max_bytes; };      // the largest data read, bytes
//   Tensor<std::uint8_t> decode_idx(bytes, where, options);  // any dimensions, gzip or plain
//   Tensor<std::uint8_t> read_idx(path, options);
//   Tensor<std::uint8_t> decode_idx_images(bytes, where, options);  // 0x00000803: N x H x W
//   Tensor<std::uint8_t> read_idx_images(path, options);
//   std::vector<Index> decode_idx_labels(bytes, where, classes, options);  // 0x00000801: N
//   std::vector<Index> read_idx_labels(path, classes, options);  // classes > 0: each < classes
//   template <class T> Tensor<T> unit_image_batch(images);  // N x H x W -> N x 1 x H x W / 255
//   std::string encode_idx(tensor, IdxWriteOptions);          // IdxWriteOptions{gzip}
//   void write_idx(path, tensor, IdxWriteOptions);

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens::io {

inline constexpr std::uint32_t k_idx_images_magic = 0x00000803;
inline constexpr std::uint32_t k_idx_labels_magic = 0x00000801;

struct IdxReadOptions {
  // The most data bytes (the product of the extents) a file may hold: 2^30, 1 GiB, twenty
  // times Fashion-MNIST's training images (47,040,000 bytes). The whole file read is bounded
  // by it as well (docs/data.md, "Limits").
  std::uint64_t max_bytes = std::uint64_t{1} << 30;
};

struct IdxWriteOptions {
  bool gzip = false;  // compress with zlib's default level (gzip header without name or time)
};

namespace detail {

using attnlens::detail::concat;
using attnlens::detail::shape_string;

inline constexpr unsigned char k_idx_unsigned_byte = 0x08;
inline constexpr std::size_t k_idx_magic_bytes = 4;
// Deflate writes at most 258 bytes per 2 bits (docs/limits.md, PNG), so a gzip file inflates
// at most 1032 times; a header that claims more data is a decompression bomb.
inline constexpr std::uint64_t k_idx_deflate_max_ratio = 1032;

[[noreturn]] inline void idx_error(const std::string& where, const std::string& what) {
  throw IoError("idx '" + where + "': " + what);
}

inline std::string idx_hex(std::uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(value));
  return text;
}

inline const char* idx_type_name(unsigned char type) {
  switch (type) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return "no IDX type";
  }
}

inline std::uint64_t idx_saturating_product(std::uint64_t a, std::uint64_t b) {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b)
    return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

inline bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

// The bytes of an IDX file, plain or inflated from gzip as they are asked for. A gzip file
// may hold several members (as `cat a.gz b.gz` makes; gunzip reads them as one); anything
// after the last is an error, and so is a stream that ends inside a member.
class IdxSource {
 public:
  IdxSource(const std::string& bytes, const std::string& where)
      : bytes_(bytes), where_(where), gzip_(is_gzip(bytes)) {
    if (!gzip_) return;
    stream_.zalloc = Z_NULL;
    stream_.zfree = Z_NULL;
    stream_.opaque = Z_NULL;
    stream_.next_in = Z_NULL;
    stream_.avail_in = 0;
    const int status = inflateInit2(&stream_, 16 + MAX_WBITS);  // gzip wrapper only
    if (status == Z_MEM_ERROR) throw std::bad_alloc();
    if (status != Z_OK)
      idx_error(where_, concat("zlib cannot start inflating (code ", status, ")"));
    open_ = true;
  }
  IdxSource(const IdxSource&) = delete;
  IdxSource& operator=(const IdxSource&) = delete;
  ~IdxSource() {
    if (open_) inflateEnd(&stream_);
  }

  bool gzip() const { return gzip_; }
  std::size_t stored_bytes() const { return bytes_.size(); }

  // Copies up to `count` bytes to `out` and returns how many: fewer only where the data ends
  // (the plain file's end, the last gzip member's end).
  std::size_t read(unsigned char* out, std::size_t count) {
    if (!gzip_) {
      const std::size_t got = std::min(count, bytes_.size() - position_);
      if (got > 0) std::memcpy(out, bytes_.data() + position_, got);
      position_ += got;
      return got;
    }
    std::size_t got = 0;
    while (got < count && !finished_) got += inflate_some(out + got, count - got);
    return got;
  }

 private:
  std::size_t inflate_some(unsigned char* out, std::size_t count) {
    constexpr std::size_t k_step = std::size_t{1} << 30;  // zlib counts in unsigned int
    if (stream_.avail_in == 0 && position_ < bytes_.size()) {
      const std::size_t take = std::min(bytes_.size() - position_, k_step);
      stream_.next_in =
          const_cast<Bytef*>(reinterpret_cast<const Bytef*>(bytes_.data() + position_));
      stream_.avail_in = static_cast<uInt>(take);
      position_ += take;
    }
    stream_.next_out = out;
    stream_.avail_out = static_cast<uInt>(std::min(count, k_step));
    const uInt asked = stream_.avail_out, offered = stream_.avail_in;
    const int status = inflate(&stream_, Z_NO_FLUSH);
    const std::size_t got = asked - stream_.avail_out;
    inflated_ += got;
    switch (status) {
      case Z_OK:
        return got;
      case Z_STREAM_END:
        end_of_member();
        return got;
      case Z_BUF_ERROR:  // no progress possible: every input byte is used and the member goes on
        if (stream_.avail_in == 0 && position_ == bytes_.size())
          idx_error(where_,
                    concat("truncated: the gzip stream ends inside a member, after ", inflated_,
                           " inflated bytes (", bytes_.size(), " compressed bytes)"));
        if (got == 0 && stream_.avail_in == offered)
          idx_error(where_, concat("corrupt gzip data: zlib makes no progress after ", inflated_,
                                   " inflated bytes"));
        return got;
      case Z_MEM_ERROR:
        throw std::bad_alloc();
      default:
        idx_error(where_, concat("corrupt gzip data after ", inflated_, " inflated bytes (zlib: ",
                                 stream_.msg ? stream_.msg : "no message", ")"));
    }
  }

  // What follows a gzip member's trailer (checked by inflate: CRC-32 and length) must be another
  // member or nothing.
  void end_of_member() {
    const std::size_t left = stream_.avail_in + (bytes_.size() - position_);
    if (left == 0) {
      finished_ = true;
      return;
    }
    const std::size_t at = bytes_.size() - left;
    const bool another = left >= 2 && static_cast<unsigned char>(bytes_[at]) == 0x1f &&
                         static_cast<unsigned char>(bytes_[at + 1]) == 0x8b;
    if (!another)
      idx_error(where_, concat(left, " bytes follow the gzip stream that ends at byte ", at,
                               " (trailing bytes)"));
    inflateReset(&stream_);
  }

  const std::string& bytes_;
  const std::string& where_;
  bool gzip_;
  bool open_ = false;
  bool finished_ = false;
  std::size_t position_ = 0;  // the next stored byte not yet handed to the reader or zlib
  std::uint64_t inflated_ = 0;
  z_stream stream_{};
};

struct IdxHeader {
  std::uint32_t magic = 0;
  Shape shape;
  std::uint64_t header_bytes = 0;
  std::uint64_t data_bytes = 0;
};

inline std::string idx_layout_name(unsigned dims) {
  if (dims == 3) return "3 dimensions (images)";
  if (dims == 1) return "1 dimension (labels)";
  return concat(dims, " dimensions");
}

// Reads and checks the magic and the extents. `dims` > 0 is the number of dimensions the
// caller needs (3 for images, 1 for labels).
inline IdxHeader read_idx_header(IdxSource& source, const std::string& where, unsigned dims,
                                 const IdxReadOptions& options) {
  unsigned char magic[k_idx_magic_bytes];
  const std::size_t got = source.read(magic, k_idx_magic_bytes);
  const char* inflated = source.gzip() ? " inflated" : "";
  if (got == 0) idx_error(where, concat("empty (0", inflated, " bytes), not an IDX file"));
  if (got < k_idx_magic_bytes)
    idx_error(where, concat("truncated: ", got, inflated, " bytes, inside the 4-byte magic"));
  IdxHeader header;
  header.magic = std::uint32_t{magic[0]} << 24 | std::uint32_t{magic[1]} << 16 |
                 std::uint32_t{magic[2]} << 8 | magic[3];
  const std::string expected = dims > 0
                                   ? concat(idx_hex(k_idx_unsigned_byte << 8 | dims),
                                            " (unsigned bytes, ", idx_layout_name(dims), ")")
                                   : std::string("0x000008NN (unsigned bytes, NN >= 1 dimensions)");
  if (magic[0] != 0 || magic[1] != 0)
    idx_error(where,
              concat("not an IDX file: magic ", idx_hex(header.magic), ", expected ", expected));
  if (magic[2] != k_idx_unsigned_byte)
    idx_error(where, concat("magic ", idx_hex(header.magic), " holds data type 0x",
                            idx_hex(magic[2]).substr(8), " (", idx_type_name(magic[2]),
                            "); attnlens reads unsigned bytes only: expected ", expected));
  if (magic[3] == 0 || (dims > 0 && magic[3] != dims))
    idx_error(where, concat("magic ", idx_hex(header.magic), " declares ",
                            idx_layout_name(magic[3]), ", expected ", expected));

  const unsigned count = magic[3];
  header.header_bytes = k_idx_magic_bytes + 4u * count;
  std::vector<unsigned char> extents(4u * count);
  const std::size_t extent_bytes = source.read(extents.data(), extents.size());
  if (extent_bytes < extents.size())
    idx_error(where, concat("truncated: the", inflated, " file ends at byte ",
                            k_idx_magic_bytes + extent_bytes, ", inside the ", count,
                            " extents of the ", header.header_bytes, "-byte header"));
  // The running product must stay within Index even when a later extent is 0, as for Tensor.
  constexpr auto k_max_count = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
  std::uint64_t product = 1;
  bool overflow = false;
  for (unsigned axis = 0; axis < count; ++axis) {
    const unsigned char* e = extents.data() + 4u * axis;
    const std::uint32_t extent =
        std::uint32_t{e[0]} << 24 | std::uint32_t{e[1]} << 16 | std::uint32_t{e[2]} << 8 | e[3];
    header.shape.push_back(static_cast<Index>(extent));
    if (extent != 0 && product > k_max_count / extent) overflow = true;
    if (!overflow) product *= extent;
  }
  if (overflow)
    idx_error(where, concat("extents ", shape_string(header.shape),
                            ": the element count overflows the index type"));
  header.data_bytes = product;
  if (product > options.max_bytes)
    idx_error(where, concat("extents ", shape_string(header.shape), " hold ", product,
                            " bytes, more than the limit of ", options.max_bytes,
                            " (IdxReadOptions::max_bytes)"));
  return header;
}

// Checks the claimed data against what the file can hold before anything is allocated: a
// plain file must hold exactly the header and the data, a gzip file at least 1/1032 of them.
inline void check_idx_size(const IdxSource& source, const IdxHeader& header,
                           const std::string& where) {
  const std::uint64_t stored = source.stored_bytes();
  const std::uint64_t needed = header.header_bytes + header.data_bytes;  // both below 2^63
  if (source.gzip()) {
    if (needed > idx_saturating_product(stored, k_idx_deflate_max_ratio))
      idx_error(where, concat("extents ", shape_string(header.shape), " need ", needed,
                              " bytes, more than its ", stored,
                              " gzip bytes can inflate to (deflate's maximum is ",
                              k_idx_deflate_max_ratio, ":1)"));
    return;
  }
  if (stored < needed)
    idx_error(where, concat("truncated: extents ", shape_string(header.shape), " need ",
                            header.data_bytes, " data bytes after the ", header.header_bytes,
                            "-byte header, the file has ", stored - header.header_bytes));
  if (stored > needed)
    idx_error(where, concat(stored - needed, " bytes follow the ", header.data_bytes,
                            " data bytes that extents ", shape_string(header.shape),
                            " hold (trailing bytes)"));
}

inline Tensor<std::uint8_t> decode_idx_dims(const std::string& bytes, const std::string& where,
                                            unsigned dims, const IdxReadOptions& options) {
  IdxSource source(bytes, where);
  const IdxHeader header = read_idx_header(source, where, dims, options);
  check_idx_size(source, header, where);
  Tensor<std::uint8_t> out(header.shape);
  const auto data_bytes = static_cast<std::size_t>(header.data_bytes);
  const std::size_t got = source.read(out.data(), data_bytes);
  if (got < data_bytes)
    idx_error(where, concat("truncated: the inflated data ends after ", got, " of the ", data_bytes,
                            " bytes that extents ", shape_string(header.shape), " hold"));
  if (source.gzip()) {
    // Inflate to the end, so the last member's CRC and length are checked and any data
    // beyond the extents is found.
    unsigned char extra[4096];
    std::uint64_t more = 0;
    for (std::size_t n; (n = source.read(extra, sizeof extra)) > 0;) more += n;
    if (more > 0)
      idx_error(where,
                concat(more, " inflated bytes follow the ", data_bytes, " data bytes that extents ",
                       shape_string(header.shape), " hold (trailing bytes)"));
  }
  return out;
}

inline std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// The file's bytes, read with a bound: at most the largest plain file of options.max_bytes
// data (and a 255-dimension header), or for gzip 9/8 of that plus 1 MiB (deflate's fixed codes
// spend at most 9 bits on a literal byte; the rest is room for headers).
inline std::string read_idx_file(const std::string& path, const IdxReadOptions& options) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) idx_error(path, "cannot open the file: " + errno_text(errno));
  struct Closer {
    std::FILE* file;
    ~Closer() { std::fclose(file); }
  } closer{file};
  std::string bytes(k_idx_magic_bytes, '\0');
  bytes.resize(std::fread(bytes.data(), 1, bytes.size(), file));
  const bool gzip = is_gzip(bytes);
  const bool idx = bytes.size() == k_idx_magic_bytes && bytes[0] == 0 && bytes[1] == 0 &&
                   static_cast<unsigned char>(bytes[2]) == k_idx_unsigned_byte && bytes[3] != 0;
  if (gzip || idx) {  // anything else fails on its first bytes; /dev/zero is not read on
    const std::uint64_t plain =
        std::min<std::uint64_t>(options.max_bytes, std::numeric_limits<std::uint64_t>::max() / 2) +
        k_idx_magic_bytes + 4 * 255;
    const std::uint64_t limit = gzip ? plain + plain / 8 + (std::uint64_t{1} << 20) : plain;
    struct stat status {};
    if (fstat(fileno(file), &status) == 0 && S_ISREG(status.st_mode) &&
        static_cast<std::uint64_t>(status.st_size) > limit)
      idx_error(path, concat("the file has ", status.st_size, " bytes, more than the ", limit,
                             " an IDX file of at most ", options.max_bytes,
                             " data bytes can take (IdxReadOptions::max_bytes)"));
    char buffer[1 << 16];
    for (std::size_t got; (got = std::fread(buffer, 1, sizeof buffer, file)) > 0;) {
      bytes.append(buffer, got);
      if (bytes.size() > limit)
        idx_error(path, concat("larger than ", limit, " bytes, the most an IDX file of at most ",
                               options.max_bytes, " data bytes can take"));
    }
  }
  if (std::ferror(file)) idx_error(path, "cannot read the file: " + errno_text(errno));
  return bytes;
}

}  // namespace detail

// The array an IDX file of unsigned bytes holds, in its shape (1 to 255 dimensions), from the
// file held in `bytes` (gzip or plain); `where` names the source in messages.
inline Tensor<std::uint8_t> decode_idx(const std::string& bytes, const std::string& where,
                                       const IdxReadOptions& options = {}) {
  return detail::decode_idx_dims(bytes, where, 0, options);
}

inline Tensor<std::uint8_t> read_idx(const std::string& path, const IdxReadOptions& options = {}) {
  return decode_idx(detail::read_idx_file(path, options), path, options);
}

// Images N x rows x cols (magic 0x00000803).
inline Tensor<std::uint8_t> decode_idx_images(const std::string& bytes, const std::string& where,
                                              const IdxReadOptions& options = {}) {
  return detail::decode_idx_dims(bytes, where, 3, options);
}

inline Tensor<std::uint8_t> read_idx_images(const std::string& path,
                                            const IdxReadOptions& options = {}) {
  return decode_idx_images(detail::read_idx_file(path, options), path, options);
}

// Labels (magic 0x00000801), each in [0, classes) when classes > 0.
inline std::vector<Index> decode_idx_labels(const std::string& bytes, const std::string& where,
                                            Index classes = 0, const IdxReadOptions& options = {}) {
  attnlens::detail::require_argument(classes >= 0, "decode_idx_labels classes",
                                     ">= 0 (0: any byte)", classes);
  const Tensor<std::uint8_t> raw = detail::decode_idx_dims(bytes, where, 1, options);
  std::vector<Index> labels(raw.storage().begin(), raw.storage().end());
  if (classes > 0)
    for (std::size_t i = 0; i < labels.size(); ++i)
      if (labels[i] >= classes)
        detail::idx_error(where, detail::concat("label ", labels[i], " at index ", i,
                                                " is outside the classes [0, ", classes, ")"));
  return labels;
}

inline std::vector<Index> read_idx_labels(const std::string& path, Index classes = 0,
                                          const IdxReadOptions& options = {}) {
  return decode_idx_labels(detail::read_idx_file(path, options), path, classes, options);
}

// Images N x H x W of bytes as a batch N x 1 x H x W (the layout VisionTransformer takes) with
// intensities byte / 255 in [0, 1].
template <class T>
Tensor<T> unit_image_batch(const Tensor<std::uint8_t>& images) {
  attnlens::detail::require_shape(images.rank() == 3, "unit_image_batch images", "N x H x W",
                                  attnlens::detail::shape_string(images.shape()));
  Tensor<T> out({images.dim(0), 1, images.dim(1), images.dim(2)});
  for (Index i = 0; i < images.size(); ++i)
    out.data()[i] = static_cast<T>(images.data()[i]) / static_cast<T>(255);
  return out;
}

// The IDX file of `array` (1 to 255 dimensions, each extent below 2^32).
inline std::string encode_idx(const Tensor<std::uint8_t>& array,
                              const IdxWriteOptions& options = {}) {
  using attnlens::detail::concat;
  const Index rank = array.rank();
  attnlens::detail::require_shape(rank >= 1 && rank <= 255, "encode_idx array",
                                  "1 to 255 dimensions",
                                  attnlens::detail::shape_string(array.shape()));
  std::string plain;
  plain.reserve(static_cast<std::size_t>(4 + 4 * rank + array.size()));
  plain += {'\0', '\0', static_cast<char>(detail::k_idx_unsigned_byte), static_cast<char>(rank)};
  for (const Index extent : array.shape()) {
    attnlens::detail::require_shape(extent <= Index{0xffffffff}, "encode_idx array",
                                    "extents below 2^32",
                                    attnlens::detail::shape_string(array.shape()));
    const auto e = static_cast<std::uint32_t>(extent);
    plain += {static_cast<char>(e >> 24), static_cast<char>(e >> 16), static_cast<char>(e >> 8),
              static_cast<char>(e)};
  }
  plain.append(reinterpret_cast<const char*>(array.data()), static_cast<std::size_t>(array.size()));
  if (!options.gzip) return plain;

  z_stream stream{};
  const int status = deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
                                  Z_DEFAULT_STRATEGY);
  if (status == Z_MEM_ERROR) throw std::bad_alloc();
  if (status != Z_OK) throw IoError(concat("idx: zlib cannot start deflating (code ", status, ")"));
  struct Ender {
    z_stream* stream;
    ~Ender() { deflateEnd(stream); }
  } ender{&stream};
  std::string packed;
  constexpr std::size_t k_step = std::size_t{1} << 20;
  std::size_t position = 0;
  unsigned char buffer[1 << 16];
  for (int flush = Z_NO_FLUSH; flush != Z_FINISH;) {
    const std::size_t take = std::min(plain.size() - position, k_step);
    stream.next_in = reinterpret_cast<Bytef*>(plain.data() + position);
    stream.avail_in = static_cast<uInt>(take);
    position += take;
    flush = position == plain.size() ? Z_FINISH : Z_NO_FLUSH;
    do {
      stream.next_out = buffer;
      stream.avail_out = sizeof buffer;
      const int code = deflate(&stream, flush);
      if (code == Z_STREAM_ERROR) throw IoError("idx: zlib failed while deflating");
      packed.append(reinterpret_cast<const char*>(buffer), sizeof buffer - stream.avail_out);
    } while (stream.avail_out == 0);
  }
  return packed;
}

// Writes encode_idx(array, options) to `path`. Throws IoError if it cannot be written.
inline void write_idx(const std::string& path, const Tensor<std::uint8_t>& array,
                      const IdxWriteOptions& options = {}) {
  const std::string bytes = encode_idx(array, options);
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) detail::idx_error(path, "cannot create the file: " + detail::errno_text(errno));
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  const int write_error = errno;
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed)
    detail::idx_error(
        path, "cannot write the file: " + detail::errno_text(written ? errno : write_error));
}

}  // namespace attnlens::io
