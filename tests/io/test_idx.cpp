// io/idx.hpp: IDX files built byte by byte here (and gzip files written with zlib's gzwrite,
// not the reader's own encoder) read back as their arrays, plain, compressed and in several
// gzip members; every malformed file (bad magic, other data types, wrong number of dimensions,
// truncation at every byte, sizes beyond the limit or beyond what the compressed bytes can
// inflate to, trailing bytes, corrupt gzip, labels outside the classes) gives an IoError
// naming the file.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attnlens/io/idx.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

std::string idx_temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("attnlens_test_idx_" + name)).string();
}

std::string idx_be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// An IDX file by hand: magic 00 00 <type> <dims>, the extents, the data.
std::string idx_bytes(const std::vector<std::uint32_t>& extents, const std::string& data,
                      unsigned char type = 0x08) {
  std::string out{'\0', '\0', static_cast<char>(type), static_cast<char>(extents.size())};
  for (const std::uint32_t e : extents) out += idx_be32(e);
  return out + data;
}

std::string idx_counting(std::size_t n) {
  std::string data(n, '\0');
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<char>((37 * i + 11) % 256);
  return data;
}

std::string idx_read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void idx_write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// `plain` compressed by zlib's gzip file interface, independently of io::encode_idx.
std::string idx_gzwrite(const std::string& plain) {
  const std::string path = idx_temp_path("gzwrite.gz");
  gzFile file = gzopen(path.c_str(), "wb9");
  EXPECT_NE(file, nullptr);
  EXPECT_EQ(gzwrite(file, plain.data(), static_cast<unsigned>(plain.size())),
            static_cast<int>(plain.size()));
  EXPECT_EQ(gzclose(file), Z_OK);
  const std::string bytes = idx_read_file(path);
  std::filesystem::remove(path);
  return bytes;
}

Tensor<std::uint8_t> idx_tensor(const Shape& shape, const std::string& data) {
  return Tensor<std::uint8_t>(shape, std::vector<std::uint8_t>(data.begin(), data.end()));
}

// The error for `bytes` decoded as `where` names the file and says `word`.
template <class Decode>
void expect_idx_error(Decode&& decode, const std::string& word) {
  expect_error_naming<IoError>(decode, word);
  expect_error_naming<IoError>(decode, "idx 'f.idx': ");
}

TEST(Idx, DecodesHandBuiltFilesPlainAndGzip) {
  const std::string data = idx_counting(2 * 3 * 4);
  const std::string plain = idx_bytes({2, 3, 4}, data);
  const Tensor<std::uint8_t> expected = idx_tensor({2, 3, 4}, data);
  EXPECT_EQ(io::decode_idx(plain, "f.idx"), expected);
  EXPECT_EQ(io::decode_idx_images(plain, "f.idx"), expected);
  EXPECT_EQ(io::decode_idx(idx_gzwrite(plain), "f.idx"), expected);
  EXPECT_EQ(io::decode_idx_images(idx_gzwrite(plain), "f.idx"), expected);
  // Big-endian extents: 258 = 0x00000102.
  const std::string long_labels = idx_counting(258);
  std::vector<Index> labels;
  for (const char c : long_labels) labels.push_back(static_cast<unsigned char>(c));
  EXPECT_EQ(io::decode_idx_labels(idx_bytes({258}, long_labels), "f.idx"), labels);
  EXPECT_EQ(io::decode_idx_labels(idx_gzwrite(idx_bytes({258}, long_labels)), "f.idx"), labels);
  // Other ranks and empty arrays.
  EXPECT_EQ(io::decode_idx(idx_bytes({2, 1, 2, 2, 1}, "abcdefgh"), "f.idx"),
            idx_tensor({2, 1, 2, 2, 1}, "abcdefgh"));
  EXPECT_EQ(io::decode_idx_images(idx_bytes({0, 28, 28}, ""), "f.idx"),
            idx_tensor({0, 28, 28}, ""));
  EXPECT_TRUE(io::decode_idx_labels(idx_gzwrite(idx_bytes({0}, "")), "f.idx").empty());
}

TEST(Idx, WriterRoundTripsThroughFilesPlainAndGzip) {
  const Tensor<std::uint8_t> images = idx_tensor({3, 5, 7}, idx_counting(105));
  for (const bool gzip : {false, true}) {
    const std::string path = idx_temp_path(gzip ? "round_trip.idx.gz" : "round_trip.idx");
    io::write_idx(path, images, {gzip});
    const std::string bytes = idx_read_file(path);
    if (gzip) {
      ASSERT_GE(bytes.size(), 2u);
      EXPECT_EQ(static_cast<unsigned char>(bytes[0]), 0x1f);
      EXPECT_EQ(static_cast<unsigned char>(bytes[1]), 0x8b);
    } else {
      EXPECT_EQ(bytes, idx_bytes({3, 5, 7}, idx_counting(105)));  // byte for byte
    }
    EXPECT_EQ(io::read_idx_images(path), images) << gzip;
    EXPECT_EQ(io::read_idx(path), images) << gzip;
    std::filesystem::remove(path);
  }
  const Tensor<std::uint8_t> labels = idx_tensor({6}, std::string("\x00\x09\x03\x03\x01\x09", 6));
  const std::string path = idx_temp_path("labels.idx.gz");
  io::write_idx(path, labels, {true});
  EXPECT_EQ(io::read_idx_labels(path, 10), (std::vector<Index>{0, 9, 3, 3, 1, 9}));
  std::filesystem::remove(path);
  // A large array goes through several deflate and inflate steps.
  const Tensor<std::uint8_t> big = idx_tensor({300, 1000}, idx_counting(300000));
  EXPECT_EQ(io::decode_idx(io::encode_idx(big, {true}), "f.idx"), big);
}

TEST(Idx, GzipMembersReadAsOneStream) {
  const std::string plain = idx_bytes({2, 2, 3}, idx_counting(12));
  const std::string members = idx_gzwrite(plain.substr(0, 7)) + idx_gzwrite(plain.substr(7));
  EXPECT_EQ(io::decode_idx_images(members, "f.idx"), idx_tensor({2, 2, 3}, idx_counting(12)));
}

TEST(Idx, BadMagicIsNamed) {
  const std::string data = idx_counting(4);
  expect_idx_error(
      [&] { io::decode_idx(std::string("\x01") + idx_bytes({4}, data).substr(1), "f.idx"); },
      "not an IDX file: magic 0x01000801");
  expect_idx_error([&] { io::decode_idx(std::string("PK\x03\x04 zip", 8), "f.idx"); },
                   "not an IDX file");
  expect_idx_error([&] { io::decode_idx(idx_bytes({1}, std::string(4, '\0'), 0x0D), "f.idx"); },
                   "data type 0x0d (float32)");
  expect_idx_error([&] { io::decode_idx(idx_bytes({1}, "a", 0x09), "f.idx"); }, "signed byte");
  expect_idx_error([&] { io::decode_idx(idx_bytes({1}, "a", 0x42), "f.idx"); }, "no IDX type");
  expect_idx_error([&] { io::decode_idx(idx_bytes({}, ""), "f.idx"); }, "declares 0 dimensions");
  expect_idx_error([&] { io::decode_idx(idx_gzwrite(idx_bytes({}, "")), "f.idx"); },
                   "declares 0 dimensions");
  expect_idx_error([&] { io::decode_idx("", "f.idx"); }, "empty (0 bytes)");
  expect_idx_error([&] { io::decode_idx(idx_gzwrite(""), "f.idx"); }, "empty (0 inflated bytes)");
}

TEST(Idx, WrongNumberOfDimensionsIsNamed) {
  const std::string labels = idx_bytes({4}, "abcd");
  const std::string images = idx_bytes({1, 2, 2}, "abcd");
  expect_idx_error([&] { io::decode_idx_images(labels, "f.idx"); },
                   "magic 0x00000801 declares 1 dimension (labels), expected 0x00000803 "
                   "(unsigned bytes, 3 dimensions (images))");
  expect_idx_error([&] { io::decode_idx_labels(images, "f.idx"); },
                   "magic 0x00000803 declares 3 dimensions (images), expected 0x00000801");
  expect_idx_error(
      [&] {
        io::decode_idx_images(idx_bytes({2, 2}, "abcd"), "f.idx");
      },
      "declares 2 dimensions");
  expect_idx_error(
      [&] {
        io::decode_idx_images(idx_gzwrite(idx_bytes({2, 2}, "abcd")), "f.idx");
      },
      "declares 2 dimensions");
}

TEST(Idx, TruncatedAtEveryByteSaysTruncated) {
  const std::string plain = idx_bytes({2, 3, 4}, idx_counting(24));
  const std::string gzip = idx_gzwrite(plain);
  for (const std::string* file : {&plain, &gzip})
    for (std::size_t n = 1; n < file->size(); ++n) {
      SCOPED_TRACE(::testing::Message() << (file == &gzip ? "gzip" : "plain") << " cut at " << n);
      expect_idx_error([&] { io::decode_idx_images(file->substr(0, n), "f.idx"); }, "truncated");
    }
  // Named with what is missing.
  expect_idx_error(
      [&] { io::decode_idx_images(plain.substr(0, 10), "f.idx"); },
      "truncated: the file ends at byte 10, inside the 3 extents of the 16-byte header");
  expect_idx_error([&] { io::decode_idx_images(plain.substr(0, 30), "f.idx"); },
                   "truncated: extents [2, 3, 4] need 24 data bytes after the 16-byte header, the "
                   "file has 14");
  // A complete gzip stream whose data is short.
  expect_idx_error([&] { io::decode_idx_images(idx_gzwrite(plain.substr(0, 30)), "f.idx"); },
                   "truncated: the inflated data ends after 14 of the 24 bytes");
}

TEST(Idx, SizesBeyondTheLimitAreRejectedBeforeAllocating) {
  // 60000 x 2^16 x 2^16 bytes: 2.6e14, far beyond the default limit of 2^30.
  expect_idx_error(
      [&] {
        io::decode_idx_images(idx_bytes({60000, 65536, 65536}, ""), "f.idx");
      },
      "hold 257698037760000 bytes, more than the limit of 1073741824 "
      "(IdxReadOptions::max_bytes)");
  // The element count itself overflows int64.
  expect_idx_error(
      [&] {
        io::decode_idx(idx_bytes({0xffffffff, 0xffffffff, 0xffffffff, 0}, ""), "f.idx");
      },
      "element count overflows");
  // A lower limit.
  io::IdxReadOptions options;
  options.max_bytes = 100;
  EXPECT_EQ(io::decode_idx(idx_bytes({10, 10}, idx_counting(100)), "f.idx", options).size(), 100);
  expect_idx_error([&] { io::decode_idx(idx_bytes({101}, idx_counting(101)), "f.idx", options); },
                   "hold 101 bytes, more than the limit of 100");
  // A gzip header that claims more than its compressed bytes can inflate to (a bomb): 10^8
  // bytes from a few dozen.
  expect_idx_error(
      [&] {
        io::decode_idx(idx_gzwrite(idx_bytes({10000, 10000}, "")), "f.idx");
      },
      "can inflate to (deflate's maximum is 1032:1)");
}

TEST(Idx, TrailingBytesAreNamed) {
  const std::string plain = idx_bytes({2, 2}, "abcd");
  expect_idx_error([&] { io::decode_idx(plain + "x", "f.idx"); },
                   "1 bytes follow the 4 data bytes that extents [2, 2] hold (trailing bytes)");
  expect_idx_error([&] { io::decode_idx(idx_gzwrite(plain + "xyz"), "f.idx"); },
                   "3 inflated bytes follow the 4 data bytes");
  const std::string gzip = idx_gzwrite(plain);
  EXPECT_EQ(io::decode_idx(gzip, "f.idx"), idx_tensor({2, 2}, "abcd"));
  expect_idx_error([&] { io::decode_idx(gzip + std::string(3, '\0'), "f.idx"); },
                   "3 bytes follow the gzip stream that ends at byte " +
                       std::to_string(gzip.size()) + " (trailing bytes)");
}

TEST(Idx, CorruptGzipIsNamed) {
  const std::string plain = idx_bytes({4, 4}, idx_counting(16));
  std::string crc = idx_gzwrite(plain);
  crc[crc.size() - 6] ^= 0x01;  // the CRC-32 of the trailer
  expect_idx_error([&] { io::decode_idx(crc, "f.idx"); }, "corrupt gzip data");
  std::string method = idx_gzwrite(plain);
  method[2] = 7;  // compression method: only 8 (deflate) exists
  expect_idx_error([&] { io::decode_idx(method, "f.idx"); }, "corrupt gzip data");
  std::string length = idx_gzwrite(plain);
  length[length.size() - 1] ^= 0x40;  // ISIZE
  expect_idx_error([&] { io::decode_idx(length, "f.idx"); }, "corrupt gzip data");
}

TEST(Idx, LabelsOutsideTheClassesAreNamed) {
  const std::string labels = idx_bytes({5}, std::string("\x00\x09\x0a\x01\x02", 5));
  EXPECT_EQ(io::decode_idx_labels(labels, "f.idx").at(2), 10);  // no class count: any byte
  EXPECT_EQ(io::decode_idx_labels(labels, "f.idx", 11).at(2), 10);
  expect_idx_error([&] { io::decode_idx_labels(labels, "f.idx", 10); },
                   "label 10 at index 2 is outside the classes [0, 10)");
  expect_idx_error([&] { io::decode_idx_labels(idx_gzwrite(labels), "f.idx", 10); },
                   "label 10 at index 2");
  expect_error_naming<ArgumentError>([&] { io::decode_idx_labels(labels, "f.idx", -1); },
                                     "classes");
}

TEST(Idx, FilesAreNamedAndReadWithABound) {
  expect_error_naming<IoError>([] { io::read_idx("/nonexistent-dir/x.idx"); },
                               "idx '/nonexistent-dir/x.idx': cannot open the file");
  expect_error_naming<IoError>(
      [] { io::write_idx("/nonexistent-dir/x.idx", Tensor<std::uint8_t>({1})); },
      "idx '/nonexistent-dir/x.idx': cannot create the file");
  // A device of zeros fails on its first four bytes instead of being read on.
  expect_error_naming<IoError>([] { io::read_idx("/dev/zero"); },
                               "idx '/dev/zero': magic 0x00000000");
  // A regular file larger than any file within the limit is refused by its size.
  const std::string path = idx_temp_path("large.idx");
  idx_write_file(path, idx_bytes({2000}, idx_counting(2000)));
  io::IdxReadOptions options;
  options.max_bytes = 100;
  expect_error_naming<IoError>([&] { io::read_idx(path, options); },
                               "the file has 2008 bytes, more than the 1124");
  expect_error_naming<IoError>([&] { io::read_idx_labels(path, 0, options); }, path);
  EXPECT_EQ(io::read_idx_labels(path).size(), 2000u);
  // Errors after the header name the file too.
  idx_write_file(path, idx_bytes({3}, "ab"));
  expect_error_naming<IoError>([&] { io::read_idx_labels(path); }, "idx '" + path + "': truncated");
  std::filesystem::remove(path);
}

TEST(Idx, EncodeChecksItsArray) {
  expect_error_naming<ShapeError>([] { io::encode_idx(Tensor<std::uint8_t>(Shape{})); },
                                  "1 to 255 dimensions");
  expect_error_naming<ShapeError>(
      [] {
        io::encode_idx(Tensor<std::uint8_t>({Index{1} << 32, 0}));
      },
      "below 2^32");
}

TEST(Idx, UnitImageBatchIsBytesOver255WithOneChannel) {
  const Tensor<std::uint8_t> bytes =
      idx_tensor({2, 1, 3}, std::string("\x00\x80\xff\x01\x02\x03", 6));
  const Tensor<float> images = io::unit_image_batch<float>(bytes);
  EXPECT_EQ(images.shape(), (Shape{2, 1, 1, 3}));
  EXPECT_EQ(images.at({0, 0, 0, 0}), 0.0f);
  EXPECT_EQ(images.at({0, 0, 0, 1}), 128.0f / 255.0f);
  EXPECT_EQ(images.at({0, 0, 0, 2}), 1.0f);
  EXPECT_EQ(images.at({1, 0, 0, 2}), 3.0f / 255.0f);
  expect_error_naming<ShapeError>([] { io::unit_image_batch<float>(Tensor<std::uint8_t>({4})); },
                                  "N x H x W");
}

}  // namespace
}  // namespace attnlens
