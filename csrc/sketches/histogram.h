// Counts of a numeric feature over fixed bin edges (the reference profile's quantile edges),
// the sum of the values in each bin, and the values that were missing (NaN, +-inf). Mergeable
// and serializable; counts are exact, sums are float64 sums (Wasserstein-1 integrates the CDF
// over each bin exactly from them: integral of F over [a, b) = F(a) (b - a) + sum_bin (b - v) / n).
// A histogram read from the format before sums (1) has NaN sums: unknown, not zero.
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
  static constexpr uint8_t kFormat = 2;  // 1: without sums

  explicit BinnedHistogram(std::vector<double> edges = {})
      : edges_(std::move(edges)), counts_(edges_.size() + 1), sums_(edges_.size() + 1) {
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
    const size_t b = bin_of(v);
    ++counts_[b];
    sums_[b] += v;
  }

  // Bulk adds, for accumulators that bin a block of values themselves.
  void add(size_t bin, uint64_t n, double sum) {
    counts_[bin] += n;
    sums_[bin] += sum;
  }
  void add_missing(uint64_t n) { missing_ += n; }

  void merge(const BinnedHistogram& other) {
    if (other.edges_ != edges_) throw std::invalid_argument("BinnedHistogram: cannot merge histograms over different edges");
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i], sums_[i] += other.sums_[i];
    missing_ += other.missing_;
  }

  const std::vector<double>& edges() const { return edges_; }
  const std::vector<uint64_t>& counts() const { return counts_; }
  const std::vector<double>& sums() const { return sums_; }
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
    for (double v : sums_) w.put(v);
    w.put(missing_);
    return w.take();
  }

  static BinnedHistogram deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "BinnedHistogram");
    const uint8_t format = r.get<uint8_t>();
    if (format != kFormat && format != 1) throw std::invalid_argument("BinnedHistogram: unknown serialization format");
    const uint32_t n = r.get<uint32_t>();
    if (n > size / sizeof(double)) throw std::invalid_argument("BinnedHistogram: corrupt edge count");
    std::vector<double> edges(n);
    for (double& e : edges) e = r.get<double>();
    BinnedHistogram h(std::move(edges));
    for (uint64_t& c : h.counts_) c = r.get<uint64_t>();
    for (double& v : h.sums_) v = format == 1 ? std::nan("") : r.get<double>();
    h.missing_ = r.get<uint64_t>();
    r.expect_end();
    return h;
  }

 private:
  std::vector<double> edges_;
  std::vector<uint64_t> counts_;
  std::vector<double> sums_;
  uint64_t missing_ = 0;
};

}  // namespace loopserve::sketches
