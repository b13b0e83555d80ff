// The k largest and k smallest values of a numeric feature, exactly. Above the smallest kept
// top value t every value is kept (a larger one left out would have displaced t), so the CDF is
// exact on [t, inf); likewise below the largest kept bottom value. Wasserstein-1 uses this in
// the tails, where a heavy tail's few extreme rows decide it and no bin or rank-error sketch
// resolves them (see loopserve/monitor/statistics.py). Mergeable (the k largest of a union are
// the k largest of the parts' k largest) and serializable; the kept values are a multiset
// determined by the values alone, whatever their order or how they were split into batches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class Extremes {
 public:
  static constexpr uint8_t kFormat = 1;
  static constexpr uint32_t kDefaultK = 16;

  explicit Extremes(uint32_t k = kDefaultK) : k_(k) {
    if (k == 0) throw std::invalid_argument("Extremes: k must be at least 1");
  }

  // A value can change the kept ones only if it is above top_floor() or below bottom_floor():
  // callers that know a block's max and min skip the block when neither is.
  double top_floor() const { return top_floor_; }
  double bottom_floor() const { return -bottom_floor_; }

  // Finite values only (the caller passes over NaN and infinities; NaN never passes a floor).
  void add(double v) {
    add_top(v);
    add_bottom(v);
  }
  void add_top(double v) {
    if (v > top_floor_) push(top_, top_floor_, v);
  }
  void add_bottom(double v) {
    if (-v > bottom_floor_) push(bottom_, bottom_floor_, -v);
  }

  // Values at the given indices (finite or not: others are passed over), one side, selecting
  // the k kept once at the end rather than as they come.
  template <typename C>
  void add_top(const C* values, const uint16_t* index, size_t n) {
    for (size_t j = 0; j < n; ++j) {
      const double v = static_cast<double>(values[index[j]]);
      if (v > top_floor_ && v - v == 0.0) top_.push_back(v);
    }
    if (top_.size() >= 2 * static_cast<size_t>(k_)) shrink(top_, top_floor_);
  }
  template <typename C>
  void add_bottom(const C* values, const uint16_t* index, size_t n) {
    for (size_t j = 0; j < n; ++j) {
      const double v = -static_cast<double>(values[index[j]]);
      if (v > bottom_floor_ && v - v == 0.0) bottom_.push_back(v);
    }
    if (bottom_.size() >= 2 * static_cast<size_t>(k_)) shrink(bottom_, bottom_floor_);
  }

  // With a smaller k the other side may have dropped values the union's k largest need: the
  // merge keeps the smaller k, so every value above the kept ones is still kept.
  void merge(const Extremes& other) {
    if (other.k_ < k_) {
      k_ = other.k_;
      if (top_.size() > k_) shrink(top_, top_floor_);
      if (bottom_.size() > k_) shrink(bottom_, bottom_floor_);
    }
    for (double v : other.top_) if (v > top_floor_) push(top_, top_floor_, v);
    for (double v : other.bottom_) if (v > bottom_floor_) push(bottom_, bottom_floor_, v);
  }

  uint32_t k() const { return k_; }
  // The kept values in increasing order: at most k of the largest, at most k of the smallest.
  std::vector<double> top() const { return kept(top_, 1.0); }
  std::vector<double> bottom() const { return kept(bottom_, -1.0); }

  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(k_);
    for (const auto& side : {top(), bottom()}) {
      w.put(static_cast<uint32_t>(side.size()));
      for (double v : side) w.put(v);
    }
    return w.take();
  }

  static Extremes deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "Extremes");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("Extremes: unknown serialization format");
    Extremes e(r.get<uint32_t>());
    for (int side = 0; side < 2; ++side) {
      const uint32_t n = r.get<uint32_t>();
      if (n > e.k_ || n > size / sizeof(double)) throw std::invalid_argument("Extremes: corrupt count");
      for (uint32_t i = 0; i < n; ++i) {
        const double v = r.get<double>();
        side == 0 ? e.push(e.top_, e.top_floor_, v) : e.push(e.bottom_, e.bottom_floor_, -v);
      }
    }
    r.expect_end();
    return e;
  }

 private:
  // Keeps the k largest of `kept` (the bottom side holds negated values): values gather up to
  // 2k, then the k largest are selected and the floor rises to the smallest of them, so a value
  // costs O(1) amortized.
  void push(std::vector<double>& kept, double& floor, double v) {
    kept.push_back(v);
    if (kept.size() >= 2 * static_cast<size_t>(k_)) shrink(kept, floor);
  }
  void shrink(std::vector<double>& kept, double& floor) const {
    std::nth_element(kept.begin(), kept.begin() + (k_ - 1), kept.end(), std::greater<double>());
    kept.resize(k_);
    floor = *std::min_element(kept.begin(), kept.end());
  }
  std::vector<double> kept(const std::vector<double>& side, double sign) const {
    std::vector<double> out = side;
    double floor = 0.0;
    if (out.size() > k_) shrink(out, floor);
    for (double& v : out) v *= sign;
    std::sort(out.begin(), out.end());
    return out;
  }

  uint32_t k_;
  std::vector<double> top_, bottom_;  // bottom_ holds the negated values
  double top_floor_ = -std::numeric_limits<double>::infinity();
  double bottom_floor_ = -std::numeric_limits<double>::infinity();
};

}  // namespace loopserve::sketches
