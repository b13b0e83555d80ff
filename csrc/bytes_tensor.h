// BYTES tensors in their wire form (as the Open Inference Protocol's binary extension sends
// them): the elements in row-major order, each a 4-byte little-endian length, then its bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace loopserve {

inline uint32_t bytes_element_length(const std::byte* p) {
  uint8_t b[4];
  std::memcpy(b, p, 4);
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
         static_cast<uint32_t>(b[3]) << 24;
}

inline void put_bytes_element_length(std::byte* p, uint32_t n) {
  const uint8_t b[4] = {static_cast<uint8_t>(n), static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n >> 16),
                        static_cast<uint8_t>(n >> 24)};
  std::memcpy(p, b, 4);
}

// The number of whole elements in `data`; -1 when it ends inside an element.
inline int64_t count_bytes_elements(const std::byte* data, size_t nbytes) {
  int64_t count = 0;
  size_t at = 0;
  while (at < nbytes) {
    if (nbytes - at < 4) return -1;
    const size_t length = bytes_element_length(data + at);
    if (nbytes - at - 4 < length) return -1;
    at += 4 + length;
    ++count;
  }
  return count;
}

// Where element `index` starts (nbytes when index is the count). The data must be whole.
inline size_t bytes_element_offset(const std::byte* data, size_t nbytes, int64_t index) {
  size_t at = 0;
  for (int64_t i = 0; i < index && at < nbytes; ++i) at += 4 + bytes_element_length(data + at);
  return at;
}

}  // namespace loopserve
