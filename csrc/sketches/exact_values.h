// A numeric feature's values kept exactly, up to a capacity: a window's whole distribution, from
// which KS and Wasserstein-1 against the reference come out exact up to the reference's own
// quantile grid (loopserve/monitor/exact_window.py) instead of from a sample. Past the capacity
// the owner drops what is kept and complete() turns false: the statistics then fall back to the
// KLL sample and its bounds. A window of the default 10,000 rows costs 40 KB a feature (FP32).
//
// Values stay in the type they were compared in (float for FP32 tensors: half the memory of
// double, and exact), in no order, missing ones (NaN, infinities) included: the accumulator
// writes its gathered blocks straight in here, and readers pass over what is not finite.
// Appendable (the union of two windows' values, while it fits) and serializable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class ExactValues {
 public:
  static constexpr uint8_t kFormat = 1;
  static constexpr uint64_t kDefaultCapacity = uint64_t{1} << 18;

  explicit ExactValues(uint64_t capacity = kDefaultCapacity) : capacity_(capacity), dropped_(capacity == 0) {}

  // Room for `n` more values of type C (and `slack` past them) in one allocation, when they
  // fit the capacity: an update sized ahead pays no growth copies.
  template <typename C>
  void expect(size_t n, size_t slack) {
    if (!dropped_ && size() + n <= capacity_) buffer<C>().reserve(buffer<C>().size + n + slack);
  }

  // Where the next `n` values of type C go, with room for `slack` more past them (a block's
  // padding, overwritten by the next block); nullptr when the sketch is dropped or they would
  // pass the capacity (then the owner spills what is kept, see drift/accumulator.h, and drops
  // it). Call added<C>(n) once they are written.
  template <typename C>
  C* next(size_t n, size_t slack) {
    if (!fits(n)) return nullptr;
    Buffer<C>& b = buffer<C>();
    if (b.room < b.size + n + slack) {  // grow by doubling, to the capacity at most (plus slack)
      const size_t most = capacity_ > std::numeric_limits<size_t>::max() - slack ? std::numeric_limits<size_t>::max()
                                                                                 : capacity_ + slack;
      b.reserve(std::min<size_t>(std::max(b.room * 2, b.size + n + slack), most));
    }
    return b.data.get() + b.size;
  }
  template <typename C>
  void added(size_t n) {
    buffer<C>().size += n;
  }

  // Every value appended so far is kept.
  bool complete() const { return !dropped_; }
  // `n` more values can be kept.
  bool fits(uint64_t n) const { return !dropped_ && size() + n <= capacity_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t size() const { return f32_.size + f64_.size; }
  // The i-th kept value (i < size()), finite or not.
  double at(size_t i) const {
    return i < f32_.size ? static_cast<double>(f32_.data[i]) : f64_.data[i - f32_.size];
  }

  // The kept values that are finite, in no particular order.
  std::vector<double> finite() const {
    std::vector<double> out;
    out.reserve(size());
    for (size_t i = 0; i < f32_.size; ++i)
      if (f32_.data[i] - f32_.data[i] == 0.0f) out.push_back(static_cast<double>(f32_.data[i]));
    for (size_t i = 0; i < f64_.size; ++i)
      if (f64_.data[i] - f64_.data[i] == 0.0) out.push_back(f64_.data[i]);
    return out;
  }

  void drop() {
    dropped_ = true;
    f32_ = {};
    f64_ = {};
  }

  // Adds the other side's values; the caller checked fits(other.size()) and other.complete().
  void append(const ExactValues& other) {
    f32_.append(other.f32_);
    f64_.append(other.f64_);
  }
  // A merge keeps the smaller capacity (a window merged from parts holds no more than either could).
  void limit_capacity(uint64_t capacity) { capacity_ = std::min(capacity_, capacity); }

  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(capacity_);
    w.put(static_cast<uint8_t>(dropped_));
    w.put(static_cast<uint64_t>(f32_.size));
    w.put(static_cast<uint64_t>(f64_.size));
    w.put_array(f32_.data.get(), f32_.size);
    w.put_array(f64_.data.get(), f64_.size);
    return w.take();
  }

  static ExactValues deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "ExactValues");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("ExactValues: unknown serialization format");
    ExactValues e(r.get<uint64_t>());
    const uint8_t dropped = r.get<uint8_t>();
    const uint64_t n32 = r.get<uint64_t>(), n64 = r.get<uint64_t>();
    if (dropped > 1 || n32 > size / sizeof(float) || n64 > size / sizeof(double) || n32 + n64 > e.capacity_ ||
        (dropped && n32 + n64 > 0))
      throw std::invalid_argument("ExactValues: corrupt header");
    e.dropped_ = dropped != 0 || e.capacity_ == 0;
    e.f32_.reserve(n32), e.f64_.reserve(n64);
    r.get_array(e.f32_.data.get(), n32);
    r.get_array(e.f64_.data.get(), n64);
    e.f32_.size = n32, e.f64_.size = n64;
    r.expect_end();
    return e;
  }

 private:
  // Values of one type: the first `size` of `room` are kept. Grown without zeroing what is
  // about to be written (a std::vector would write every new slot twice).
  template <typename C>
  struct Buffer {
    std::unique_ptr<C[]> data;
    size_t size = 0, room = 0;

    Buffer() = default;
    Buffer(Buffer&&) = default;
    Buffer& operator=(Buffer&&) = default;
    Buffer(const Buffer& other) { *this = other; }
    Buffer& operator=(const Buffer& other) {
      if (this != &other) {
        Buffer copy;
        copy.reserve(other.size);
        if (other.size) std::memcpy(copy.data.get(), other.data.get(), other.size * sizeof(C));
        copy.size = other.size;
        *this = std::move(copy);
      }
      return *this;
    }
    void reserve(size_t n) {
      if (n <= room) return;
      std::unique_ptr<C[]> grown(new C[n]);  // default-initialized: not zeroed
      if (size) std::memcpy(grown.get(), data.get(), size * sizeof(C));
      data = std::move(grown);
      room = n;
    }
    void append(const Buffer& other) {
      reserve(size + other.size);
      if (other.size) std::memcpy(data.get() + size, other.data.get(), other.size * sizeof(C));
      size += other.size;
    }
  };

  template <typename C>
  Buffer<C>& buffer() {
    if constexpr (std::is_same_v<C, float>) return f32_;
    else return f64_;
  }

  uint64_t capacity_;
  bool dropped_;
  Buffer<float> f32_;   // values of FP32 tensors
  Buffer<double> f64_;  // values of other tensors
};

}  // namespace loopserve::sketches
