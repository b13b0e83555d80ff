// Counts of a categorical feature: one slot per reference category (the profile's top-k),
// an "other" slot for every other or unseen category, and missing values. Mergeable,
// serializable, exact.
//
// Integer codes map to slots through a lookup table: slot = lut[code] when code < lut size,
// else "other"; a negative or non-finite code is missing.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class CategoryCounts {
 public:
  static constexpr uint8_t kFormat = 1;

  // `slots` reference categories (slot `slots` is "other"); `lut` maps codes to slots.
  CategoryCounts(uint32_t slots, std::vector<int32_t> lut) : lut_(std::move(lut)), counts_(slots + 1) {
    for (int32_t s : lut_)
      if (s < 0 || static_cast<uint32_t>(s) > slots)
        throw std::invalid_argument("CategoryCounts: lookup table holds a slot outside 0..slots");
  }

  uint32_t other_slot() const { return static_cast<uint32_t>(counts_.size() - 1); }

  uint32_t slot_of(int64_t code) const {
    return code < static_cast<int64_t>(lut_.size()) ? static_cast<uint32_t>(lut_[static_cast<size_t>(code)])
                                                    : other_slot();
  }

  void update(int64_t code) {
    if (code < 0) {
      ++missing_;
      return;
    }
    ++counts_[slot_of(code)];
  }

  void add(uint32_t slot, uint64_t n) { counts_[slot] += n; }
  void add_missing(uint64_t n) { missing_ += n; }

  void merge(const CategoryCounts& other) {
    if (other.counts_.size() != counts_.size() || other.lut_ != lut_)
      throw std::invalid_argument("CategoryCounts: cannot merge counts over different categories");
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    missing_ += other.missing_;
  }

  const std::vector<uint64_t>& counts() const { return counts_; }
  const std::vector<int32_t>& lut() const { return lut_; }
  uint64_t missing() const { return missing_; }

  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(static_cast<uint32_t>(counts_.size() - 1));
    w.put(static_cast<uint32_t>(lut_.size()));
    for (int32_t s : lut_) w.put(s);
    for (uint64_t c : counts_) w.put(c);
    w.put(missing_);
    return w.take();
  }

  static CategoryCounts deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "CategoryCounts");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("CategoryCounts: unknown serialization format");
    const uint32_t slots = r.get<uint32_t>();
    const uint32_t lut_size = r.get<uint32_t>();
    if (slots > size || lut_size > size) throw std::invalid_argument("CategoryCounts: corrupt sizes");
    std::vector<int32_t> lut(lut_size);
    for (int32_t& s : lut) s = r.get<int32_t>();
    CategoryCounts c(slots, std::move(lut));
    for (uint64_t& n : c.counts_) n = r.get<uint64_t>();
    c.missing_ = r.get<uint64_t>();
    r.expect_end();
    return c;
  }

 private:
  std::vector<int32_t> lut_;
  std::vector<uint64_t> counts_;
  uint64_t missing_ = 0;
};

}  // namespace loopserve::sketches
