// The C++ tests' tally: check() counts every assertion and prints a failure at once (flushed, so
// the message survives a later crash); report() prints the totals and gives main's exit status.
#pragma once

#include <cstdio>
#include <string>

namespace repsr_test {

inline int g_passed = 0, g_failed = 0;

inline void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
    std::fflush(stdout);
  }
}

inline int report() {
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace repsr_test
