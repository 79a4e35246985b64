// The suite's one comparison of two arrays: an attnlens::Tensor or any Eigen dense expression
// (a matrix, a block, a row, a difference of products, an integer or long double matrix) against
// another of the same shape. Use it for every "max |actual - expected| <= tol" check:
//
//   ATTNLENS_EXPECT_CLOSE(actual, expected, tol);            // every |a - e| <= tol, no NaN
//   ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected, rel, abs);  // |a - e| <= max(abs, rel |e|)
//   EXPECT_GT(testing::max_abs_error(a, b), 1e-3);           // "the term changed something"
//
// A NaN anywhere, on either side, fails: `(a - b).cwiseAbs().maxCoeff()` returns NaN only when
// the NaN is the first entry Eigen visits, and `std::max(error, NaN)` returns `error`, so both
// let a NaN (an unwritten NaN-prefilled output, a masked NaN that leaked) pass as "close". Here
// NaN makes ATTNLENS_EXPECT_CLOSE fail and max_abs_error return NaN, which fails EXPECT_LE and
// EXPECT_GT alike. Equal infinities count as equal (error 0); an infinity against anything
// else is an infinite error. The fixtures never hold NaN (tests/reference/fixturelib.py refuses
// to write one), so no comparison needs NaN == NaN; a test that expects a NaN checks std::isnan.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "attnlens/core/tensor.hpp"

namespace attnlens::testing {

// An array as its shape and its entries in row-major order, in long double (so a long double
// expectation is compared without rounding it to double first).
struct FlatArray {
  Shape shape;
  std::vector<long double> values;
};

template <class T>
FlatArray flat_array(const Tensor<T>& t) {
  FlatArray f{t.shape(), {}};
  f.values.reserve(static_cast<std::size_t>(t.size()));
  for (Index i = 0; i < t.size(); ++i) f.values.push_back(static_cast<long double>(t.data()[i]));
  return f;
}

template <class Derived>
FlatArray flat_array(const Eigen::DenseBase<Derived>& x) {
  const auto m = x.eval();  // a product or other expression, evaluated once
  FlatArray f{{static_cast<Index>(m.rows()), static_cast<Index>(m.cols())}, {}};
  f.values.reserve(static_cast<std::size_t>(m.size()));
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) f.values.push_back(static_cast<long double>(m(i, j)));
  return f;
}

inline std::string shape_string(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (std::size_t k = 0; k < shape.size(); ++k) s << (k ? ", " : "") << shape[k];
  s << "]";
  return s.str();
}

// The multi-index of row-major flat index n in `shape`, as "(i, j, ...)".
inline std::string index_string(const Shape& shape, Index n) {
  std::vector<Index> index(shape.size());
  for (std::size_t k = shape.size(); k-- > 0;) {
    index[k] = shape[k] > 0 ? n % shape[k] : 0;
    n = shape[k] > 0 ? n / shape[k] : 0;
  }
  std::ostringstream s;
  s << "(";
  for (std::size_t k = 0; k < index.size(); ++k) s << (k ? ", " : "") << index[k];
  s << ")";
  return s.str();
}

// How an entry's error is measured: |actual - expected| / max(floor, relative |expected|). The
// default is the absolute error; {absolute, relative} makes 1 the bound of a tolerance that is
// relative on large values and absolute below absolute / relative.
struct ErrorScale {
  long double floor = 1, relative = 0;
};

// Entry by entry: the NaNs (on either side) and the largest error (ErrorScale) elsewhere.
struct Comparison {
  bool same_shape = true;
  Shape actual_shape, expected_shape;
  Index size = 0;
  Index nan_count = 0, first_nan = -1;  // entries where actual or expected is NaN
  long double max_error = 0;            // over the other entries; equal infinities give 0
  Index worst = -1;                     // where max_error is, -1 if every error is 0
  long double worst_actual = 0, worst_expected = 0;
  long double first_nan_actual = 0, first_nan_expected = 0;
};

inline Comparison compare_flat(const FlatArray& a, const FlatArray& e, ErrorScale scale = {}) {
  Comparison c;
  c.actual_shape = a.shape;
  c.expected_shape = e.shape;
  c.same_shape = a.shape == e.shape && a.values.size() == e.values.size();
  if (!c.same_shape) return c;
  c.size = static_cast<Index>(a.values.size());
  for (Index n = 0; n < c.size; ++n) {
    const long double x = a.values[static_cast<std::size_t>(n)];
    const long double y = e.values[static_cast<std::size_t>(n)];
    if (std::isnan(x) || std::isnan(y)) {
      if (c.nan_count++ == 0) {
        c.first_nan = n;
        c.first_nan_actual = x;
        c.first_nan_expected = y;
      }
      continue;
    }
    const long double error =  // inf - inf would be NaN
        x == y ? 0.0L : std::fabs(x - y) / std::max(scale.floor, scale.relative * std::fabs(y));
    if (error > c.max_error) {
      c.max_error = error;
      c.worst = n;
      c.worst_actual = x;
      c.worst_expected = y;
    }
  }
  return c;
}

template <class A, class E>
Comparison compare(const A& actual, const E& expected, ErrorScale scale = {}) {
  return compare_flat(flat_array(actual), flat_array(expected), scale);
}

// Largest |actual - expected|; NaN if either side holds a NaN anywhere, or (with a failure
// added) if the shapes differ, so that both EXPECT_LE(error, tol) and EXPECT_GT(error, x) fail.
template <class A, class E>
double max_abs_error(const A& actual, const E& expected) {
  const Comparison c = compare(actual, expected);
  if (!c.same_shape) {
    ADD_FAILURE() << "max_abs_error: shapes differ, " << shape_string(c.actual_shape) << " vs "
                  << shape_string(c.expected_shape);
    return NAN;
  }
  return c.nan_count > 0 ? NAN : static_cast<double>(c.max_error);
}

// Success iff the shapes agree, no entry of either side is NaN and c.max_error <= bound (bound
// not NaN); a failure starts with `header` and calls the largest error `error_name`.
inline ::testing::AssertionResult close_result(const Comparison& c, double bound,
                                               const std::string& header, const char* error_name) {
  const auto failure = [&] { return ::testing::AssertionFailure() << header; };
  if (!c.same_shape)
    return failure() << "shapes differ, " << shape_string(c.actual_shape) << " vs "
                     << shape_string(c.expected_shape);
  if (c.nan_count > 0)
    return failure() << c.nan_count << " of " << c.size << " entries are NaN, the first at "
                     << index_string(c.actual_shape, c.first_nan) << ": "
                     << static_cast<double>(c.first_nan_actual) << " vs "
                     << static_cast<double>(c.first_nan_expected);
  if (!(c.max_error <= static_cast<long double>(bound)))
    return failure() << error_name << " " << static_cast<double>(c.max_error) << " at "
                     << index_string(c.actual_shape, c.worst) << ": "
                     << static_cast<double>(c.worst_actual) << " vs "
                     << static_cast<double>(c.worst_expected);
  return ::testing::AssertionSuccess();
}

// The predicate-format function of ATTNLENS_EXPECT_CLOSE: success iff the shapes agree, no
// entry of either side is NaN, and every |actual - expected| <= tol (tol itself not NaN).
template <class A, class E>
::testing::AssertionResult expect_close_format(const char* actual_text, const char* expected_text,
                                               const char* tol_text, const A& actual,
                                               const E& expected, double tol) {
  std::ostringstream header;
  header << actual_text << " vs " << expected_text << " (tolerance " << tol_text << " = " << tol
         << "): ";
  return close_result(compare(actual, expected), tol, header.str(), "max error");
}

// The predicate-format function of ATTNLENS_EXPECT_RELATIVE_CLOSE: as expect_close_format, with
// every |actual - expected| <= max(absolute, relative |expected|) (gradients against PyTorch:
// 1e-4 relative, 1e-5 absolute below magnitude 0.1, in float).
template <class A, class E>
::testing::AssertionResult expect_relative_close_format(const char* actual_text,
                                                        const char* expected_text,
                                                        const char* relative_text,
                                                        const char* absolute_text, const A& actual,
                                                        const E& expected, double relative,
                                                        double absolute) {
  std::ostringstream header;
  header << actual_text << " vs " << expected_text << " (tolerance max(" << absolute_text << ", "
         << relative_text << " |expected|) = max(" << absolute << ", " << relative
         << " |expected|)): ";
  const ErrorScale scale{static_cast<long double>(absolute), static_cast<long double>(relative)};
  return close_result(compare(actual, expected, scale), 1.0, header.str(), "max error / tolerance");
}

}  // namespace attnlens::testing

// EXPECT that two arrays (Tensors or Eigen expressions) of the same shape agree to `tol` at
// every entry, with no NaN on either side; a failure names the worst entry (or the first NaN).
// More context can be streamed: ATTNLENS_EXPECT_CLOSE(a, b, 1e-5) << "tiling " << t. Like any
// EXPECT_*, it wants braces as the body of an if (GCC warns -Wdangling-else otherwise).
#define ATTNLENS_EXPECT_CLOSE(actual, expected, tol) \
  EXPECT_PRED_FORMAT3(::attnlens::testing::expect_close_format, actual, expected, tol)

// EXPECT that two arrays agree entry by entry to max(absolute, relative |expected|), with no NaN
// on either side; a failure names the worst entry by its error in units of its tolerance.
#define ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected, relative, absolute)               \
  EXPECT_PRED_FORMAT4(::attnlens::testing::expect_relative_close_format, actual, expected, \
                      relative, absolute)
