// Streaming moments of one numeric feature: count, mean, variance (Welford), min, max, and
// missing values (NaN), mergeable (Chan et al.) and serializable.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class MomentsSketch {
 public:
  static constexpr uint8_t kFormat = 1;

  void update(double x) {
    if (std::isnan(x)) {
      ++missing_;
      return;
    }
    ++n_;
    const double delta = x - mean_;
    mean_ += delta / static_cast<double>(n_);
    m2_ += delta * (x - mean_);
    min_ = std::min(min_, x);
    max_ = std::max(max_, x);
  }

  // A summary of values computed elsewhere (a block of a batch, a GPU kernel), to merge in.
  static MomentsSketch from_parts(uint64_t n, uint64_t missing, double mean, double m2, double min, double max) {
    MomentsSketch s;
    s.n_ = n;
    s.missing_ = missing;
    if (n > 0) {
      s.mean_ = mean;
      s.m2_ = m2;
      s.min_ = min;
      s.max_ = max;
    }
    return s;
  }

  void merge(const MomentsSketch& other) {
    missing_ += other.missing_;
    if (other.n_ == 0) return;
    if (n_ == 0) {
      const uint64_t missing = missing_;
      *this = other;
      missing_ = missing;
      return;
    }
    const double na = static_cast<double>(n_), nb = static_cast<double>(other.n_), n = na + nb;
    const double delta = other.mean_ - mean_;
    mean_ += delta * nb / n;
    m2_ += other.m2_ + delta * delta * na * nb / n;
    n_ += other.n_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  uint64_t count() const { return n_; }
  uint64_t missing() const { return missing_; }
  double mean() const { return n_ ? mean_ : std::numeric_limits<double>::quiet_NaN(); }
  // Population variance (divided by n), as numpy's var() with ddof=0.
  double variance() const { return n_ ? m2_ / static_cast<double>(n_) : std::numeric_limits<double>::quiet_NaN(); }
  double min() const { return n_ ? min_ : std::numeric_limits<double>::quiet_NaN(); }
  double max() const { return n_ ? max_ : std::numeric_limits<double>::quiet_NaN(); }

  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(n_);
    w.put(missing_);
    w.put(mean_);
    w.put(m2_);
    w.put(min_);
    w.put(max_);
    return w.take();
  }

  static MomentsSketch deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "MomentsSketch");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("MomentsSketch: unknown serialization format");
    MomentsSketch s;
    s.n_ = r.get<uint64_t>();
    s.missing_ = r.get<uint64_t>();
    s.mean_ = r.get<double>();
    s.m2_ = r.get<double>();
    s.min_ = r.get<double>();
    s.max_ = r.get<double>();
    r.expect_end();
    // Payloads come from other replicas: what update() can never produce is refused (its values
    // are finite, so are min and max; m2 may overflow to +inf but is never negative or NaN).
    if (s.n_ > 0 && !(std::isfinite(s.min_) && std::isfinite(s.max_) && s.min_ <= s.max_ && s.mean_ == s.mean_ &&
                      s.m2_ >= 0.0))
      throw std::invalid_argument("MomentsSketch: corrupt moments (min, max, mean or m2)");
    return s;
  }

 private:
  uint64_t n_ = 0;
  uint64_t missing_ = 0;
  double mean_ = 0.0;
  double m2_ = 0.0;
  double min_ = std::numeric_limits<double>::infinity();
  double max_ = -std::numeric_limits<double>::infinity();
};

}  // namespace loopserve::sketches
