// Little-endian, versioned byte encoding shared by the sketches' serialize/deserialize.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace loopserve::sketches {

class Writer {
 public:
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));  // the hosts we build for are little-endian
  }
  template <typename T>
  void put_array(const T* values, size_t n) {
    const auto* p = reinterpret_cast<const uint8_t*>(values);
    bytes_.insert(bytes_.end(), p, p + n * sizeof(T));
  }
  std::vector<uint8_t> take() { return std::move(bytes_); }

 private:
  std::vector<uint8_t> bytes_;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const char* what) : data_(data), size_(size), what_(what) {}
  template <typename T>
  T get() {
    if (size_ - at_ < sizeof(T))
      throw std::invalid_argument(std::string(what_) + ": serialized bytes are truncated");
    T value;
    std::memcpy(&value, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  template <typename T>
  void get_array(T* out, size_t n) {
    if ((size_ - at_) / sizeof(T) < n)
      throw std::invalid_argument(std::string(what_) + ": serialized bytes are truncated");
    if (n) std::memcpy(out, data_ + at_, n * sizeof(T));
    at_ += n * sizeof(T);
  }
  void expect_end() const {
    if (at_ != size_) throw std::invalid_argument(std::string(what_) + ": trailing bytes after the sketch");
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
  const char* what_;
};

}  // namespace loopserve::sketches
