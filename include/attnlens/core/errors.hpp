// The exceptions attnlens throws, and the checks that build their messages. A message names
// the argument, the value expected and the value found.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace attnlens {

// A tensor or matrix argument has the wrong shape.
class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// An option or scalar argument is out of its domain.
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A file or byte buffer is malformed or cannot be read or written.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <class Int>
std::string shape_string(const std::vector<Int>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

// Throws ShapeError "<what>: expected <expected>, got <actual>" unless ok.
inline void require_shape(bool ok, const std::string& what, const std::string& expected,
                          const std::string& actual) {
  if (!ok) throw ShapeError(what + ": expected " + expected + ", got " + actual);
}

// Throws ArgumentError "<what>: expected <expected>, got <actual>" unless ok.
template <class Actual>
void require_argument(bool ok, const std::string& what, const std::string& expected,
                      const Actual& actual) {
  if (!ok) throw ArgumentError(concat(what, ": expected ", expected, ", got ", actual));
}

// Checks that a matrix argument is rows x cols.
template <class Mat>
void require_matrix(const Mat& m, std::ptrdiff_t rows, std::ptrdiff_t cols,
                    const std::string& what) {
  if (m.rows() != rows || m.cols() != cols)
    throw ShapeError(
        concat(what, ": expected ", rows, " x ", cols, ", got ", m.rows(), " x ", m.cols()));
}

}  // namespace detail
}  // namespace attnlens
