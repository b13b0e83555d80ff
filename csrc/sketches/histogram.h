// Counts of a numeric feature over fixed bin edges (the reference profile's quantile edges),
// plus the values that were missing (NaN, +-inf). Mergeable and serializable; exact.
//
// Bins: with interior edges e_1 < ... < e_{B-1}, a finite value v falls in bin #{e_i <= v}
// (numpy's searchsorted(edges, v, side="right")): bin 0 is (-inf, e_1), bin B-1 is [e_{B-1}, inf).
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class BinnedHistogram {
 public:
  static constexpr uint8_t kFormat = 1;

  explicit BinnedHistogram(std::vector<double> edges = {}) : edges_(std::move(edges)), counts_(edges_.size() + 1) {
    for (size_t i = 0; i < edges_.size(); ++i) {
      if (!std::isfinite(edges_[i])) throw std::invalid_argument("BinnedHistogram: bin edges must be finite");
      if (i > 0 && !(edges_[i - 1] < edges_[i]))
        throw std::invalid_argument("BinnedHistogram: bin edges must be strictly increasing");
    }
  }

  size_t bin_of(double v) const {
    size_t b = 0;
    for (double e : edges_) b += e <= v;
    return b;
  }

  void update(double v) {
    if (v - v != 0.0) {  // NaN or infinite
      ++missing_;
      return;
    }
    ++counts_[bin_of(v)];
  }

  // Bulk adds, for accumulators that bin a block of values themselves.
  void add(size_t bin, uint64_t n) { counts_[bin] += n; }
  void add_missing(uint64_t n) { missing_ += n; }

  void merge(const BinnedHistogram& other) {
    if (other.edges_ != edges_) throw std::invalid_argument("BinnedHistogram: cannot merge histograms over different edges");
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    missing_ += other.missing_;
  }

  const std::vector<double>& edges() const { return edges_; }
  const std::vector<uint64_t>& counts() const { return counts_; }
  uint64_t missing() const { return missing_; }
  uint64_t count() const {
    uint64_t n = 0;
    for (uint64_t c : counts_) n += c;
    return n;
  }

  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(static_cast<uint32_t>(edges_.size()));
    for (double e : edges_) w.put(e);
    for (uint64_t c : counts_) w.put(c);
    w.put(missing_);
    return w.take();
  }

  static BinnedHistogram deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "BinnedHistogram");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("BinnedHistogram: unknown serialization format");
    const uint32_t n = r.get<uint32_t>();
    if (n > size / sizeof(double)) throw std::invalid_argument("BinnedHistogram: corrupt edge count");
    std::vector<double> edges(n);
    for (double& e : edges) e = r.get<double>();
    BinnedHistogram h(std::move(edges));
    for (uint64_t& c : h.counts_) c = r.get<uint64_t>();
    h.missing_ = r.get<uint64_t>();
    r.expect_end();
    return h;
  }

 private:
  std::vector<double> edges_;
  std::vector<uint64_t> counts_;
  uint64_t missing_ = 0;
};

}  // namespace loopserve::sketches
