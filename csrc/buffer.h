// An owned, 64-byte aligned block of uninitialised bytes.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace loopserve {

// Move-only; not shared between threads (each owner uses its own).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t size) { allocate(size); }

  std::byte* data() noexcept { return ptr_.get(); }
  const std::byte* data() const noexcept { return ptr_.get(); }
  size_t size() const noexcept { return size_; }

  // Makes room for at least `size` bytes; grows only, and does not keep the contents.
  void reserve(size_t size) {
    if (size > capacity_) allocate(size);
    size_ = size;
  }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept { std::free(p); }
  };

  void allocate(size_t size) {
    constexpr size_t kAlign = 64;
    size_t rounded = (size + kAlign - 1) / kAlign * kAlign;
    if (rounded == 0) rounded = kAlign;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlign, rounded));
    if (p == nullptr) throw std::bad_alloc();
    ptr_.reset(p);
    capacity_ = rounded;
    size_ = size;
  }

  std::unique_ptr<std::byte, Free> ptr_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace loopserve
