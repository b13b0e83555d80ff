// What msgspec (the Python path's JSON library, server/protocol.py) does that yyjson does not,
// for the native infer codec (http/infer_codec.cpp): float notation on writing, and the
// nesting depth it refuses on reading.
//
// Thread-safety: pure functions.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstring>

namespace loopserve::http {

// A finite double as msgspec writes it (the Python path's encoder): the shortest digits that
// read back as the same double (Python's repr's digits), in fixed notation for 1e-5 <= |d| <
// 1e16 ("0.00001", "100.0") and else as "1.5e-6", "1e16" (no '+', no padded exponent).
// yyjson's own writer switches at 1e-7 and 1e21 instead ("0.0000015", "10000000000000000.0").
inline size_t format_like_msgspec(double d, char* out) {
  char sci[32];  // std::to_chars' shortest round-trip form: "-1.5e-06", "1e+16", "0e+00"
  const char* end = std::to_chars(sci, sci + sizeof sci, d, std::chars_format::scientific).ptr;
  const char* p = sci;
  char* w = out;
  if (*p == '-') *w++ = *p++;
  char digits[20];
  size_t n = 0;
  for (; p < end && *p != 'e'; ++p)
    if (*p != '.') digits[n++] = *p;
  int exponent = 0;
  std::from_chars(p + 1 + (p[1] == '+'), end, exponent);
  while (n > 1 && digits[n - 1] == '0') --n;  // "1.50e+00" never comes, but "0e+00" keeps its 0
  if (exponent >= -5 && exponent < 16) {
    if (exponent >= 0) {
      const size_t whole = static_cast<size_t>(exponent) + 1;
      for (size_t i = 0; i < whole; ++i) *w++ = i < n ? digits[i] : '0';
      *w++ = '.';
      if (n > whole) {
        std::memcpy(w, digits + whole, n - whole);
        w += n - whole;
      } else {
        *w++ = '0';
      }
    } else {
      *w++ = '0';
      *w++ = '.';
      for (int i = -1; i > exponent; --i) *w++ = '0';
      std::memcpy(w, digits, n);
      w += n;
    }
  } else {
    *w++ = digits[0];
    if (n > 1) {
      *w++ = '.';
      std::memcpy(w, digits + 1, n - 1);
      w += n - 1;
    }
    *w++ = 'e';
    w = std::to_chars(w, w + 8, exponent).ptr;
  }
  return static_cast<size_t>(w - out);
}

// msgspec (the Python decoder) refuses JSON nested past about 1000 levels anywhere in the body,
// even in fields it skips (its RecursionError: the exact depth depends on the Python stack);
// yyjson reads any depth. A body nested deeper than this is declined.
inline constexpr size_t kMaxDepth = 256;

inline bool nested_deeper_than(const char* json, size_t size, size_t limit) {
  // Fewer brackets than the limit cannot nest that deep: most bodies stop at this count.
  size_t opens = 0;
  for (size_t i = 0; i < size; ++i) opens += json[i] == '[' || json[i] == '{';
  if (opens <= limit) return false;
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

}  // namespace loopserve::http
