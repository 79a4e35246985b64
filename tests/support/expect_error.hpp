// expect_error_naming: the check that a bad-input path throws the right exception type with a
// message naming what was wrong.
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace attnlens::testing {

// Runs body, expecting an exception of type E whose message contains `word`.
template <class E, class Body>
void expect_error_naming(Body&& body, const std::string& word) {
  try {
    body();
    ADD_FAILURE() << "no exception; expected one naming '" << word << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

}  // namespace attnlens::testing
