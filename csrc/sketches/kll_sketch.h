// A KLL quantile sketch (Karnin, Lang, Liberty 2016, with the lazy compaction and capacity
// schedule of Apache DataSketches): the approximate rank of any value, and the approximate
// value at any rank, of a stream of doubles, in O(k log(n/k)) memory. Mergeable, serializable.
//
// Error: with k = 200, the rank of a value is off by at most ~1.33% of n with 99% confidence
// (normalized_rank_error(k), DataSketches' fit of the bound: 2.296 / k^0.9723); merging
// sketches keeps the bound. min and max are exact.
//
// Speed: update() is on the drift monitor's hot loop. With k = 200 on a 2-core AMD EPYC it
// takes ~8 ns a value for n = 12,500 and ~11.5 ns for 10^6..10^7 (csrc/tests/kll_bench.cpp),
// from ~46 and ~31 ns with std::sort on every compaction:
// - Level 0 holds at least kLevel0Width items (the schedule's own capacity when that is
//   larger). KLL's error is a sum over compactions, each moving a rank by at most the weight
//   of its level, and every compaction still involves at least its level's capacity; a wider
//   level 0 only means fewer (weight-1) compactions, so the bound holds as before (measured:
//   mean and 99th-percentile errors no worse) for about kLevel0Width more items. It also means
//   fewer, larger compactions: deep sketches used to compact every ~14 values.
// - Level 0 also compacts once it holds kLevel0Most items, even while the levels above have
//   room (as KLL without lazy compaction would at its capacity): sorting level 0 is most of an
//   update's cost, and growing n log n, it is cheaper in runs of ~128 than of the ~300 lazy
//   compaction lets level 0 reach at k = 400 (measured: 10.4 -> 9.0 ns a value for 20 sketches
//   of 8,000 values each). A compaction of weight 1 moves a rank by at most 1, and each still
//   involves at least level 0's capacity, so the bound holds as before.
// - update() only appends to level 0: the count and retained size follow from the level
//   sizes, min and max are taken from level 0 as it is sorted (or from its items when asked),
//   so the hot loop carries no running min, max or counters through memory.
// - Level 0 is sorted without data-dependent branches (std::sort on random doubles
//   mispredicts about every other comparison): a sorting network on blocks of 16 (two blocks
//   at once in the two lanes of SSE2 registers), then bottom-up merges that fill the output
//   from both ends, and in longer merges both halves, at once, with selects, not jumps.
// - Levels above 0 are never sorted: what a compaction promotes is already sorted, so a level
//   is a list of sorted runs, and compacting it merges them (usually two or three).
// - update(values, n) appends stretches of values between compactions; the same sketch, bit
//   for bit, as update() on each.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "sketches/serde.h"

namespace loopserve::sketches {

// Not thread-safe: one owner updates it; copies merge.
class KllSketch {
 public:
  static constexpr uint8_t kFormat = 1;
  static constexpr uint16_t kDefaultK = 200;
  static constexpr uint32_t kMinWidth = 8;
  static constexpr uint32_t kLevel0Width = 96;  // level 0 never holds fewer (see above)
  static constexpr uint32_t kLevel0Most = 128;   // level 0 compacts at this size (or its capacity, if more)

  explicit KllSketch(uint16_t k = kDefaultK, uint64_t seed = 0x9E3779B97F4A7C15ull) : k_(k), rng_(seed | 1) {
    if (k < kMinWidth) throw std::invalid_argument("KllSketch: k must be at least 8");
    add_level();
  }

  static double normalized_rank_error(uint16_t k) { return 2.296 / std::pow(static_cast<double>(k), 0.9723); }

  // Level 0 takes the value and nothing else: the count and retained size follow from the
  // level sizes, and min and max from level 0 when it is sorted (or from its items when asked),
  // so the hot loop carries no running minimum, maximum or counters through memory.
  void update(double x) {
    if (std::isnan(x)) return;  // missing values are counted by MomentsSketch
    std::vector<double>& level0 = levels_[0];
    level0.push_back(x);
    if (level0.size() >= level0_limit_) compress();
  }

  // The same as update() on each value in turn (the same sketch, bit for bit), with values
  // copied into level 0 in stretches up to the next compaction.
  void update(const double* values, size_t count) {
    while (count > 0) {
      std::vector<double>& level0 = levels_[0];
      const size_t size = level0.size();
      // The value that brings level 0 to its limit compresses, as in update().
      const size_t take = std::min(count, level0_limit_ > size ? level0_limit_ - size : size_t{1});
      level0.resize(size + take);
      double* out = level0.data() + size;
      size_t kept = 0;
      for (size_t i = 0; i < take; ++i) {  // NaNs are written over
        const double x = values[i];
        out[kept] = x;
        kept += !std::isnan(x);
      }
      level0.resize(size + kept);
      values += take;
      count -= take;
      if (level0.size() >= level0_limit_) compress();
    }
  }

  void merge(const KllSketch& other) {
    if (other.k_ != k_) throw std::invalid_argument("KllSketch: cannot merge sketches of different k");
    if (other.count() == 0) return;
    if (&other == this) {  // appending a level to itself would read what it writes
      const KllSketch copy(other);
      merge(copy);
      return;
    }
    min_ = std::min(lowest(), other.lowest());
    max_ = std::max(highest(), other.highest());
    while (levels_.size() < other.levels_.size()) add_level();
    for (size_t h = 0; h < other.levels_.size(); ++h) {
      std::vector<double>& level = levels_[h];
      const size_t base = level.size();
      level.insert(level.end(), other.levels_[h].begin(), other.levels_[h].end());
      if (h > 0)
        for (uint32_t end : other.runs_[h]) runs_[h].push_back(static_cast<uint32_t>(base + end));
    }
    upper_weight_ += other.upper_weight_;
    upper_retained_ += other.upper_retained_;
    set_level0_limit();
    while (retained() > total_capacity_) compress();
  }

  uint64_t count() const { return upper_weight_ + levels_[0].size(); }
  uint16_t k() const { return k_; }
  size_t retained() const { return upper_retained_ + levels_[0].size(); }
  double min() const { return count() ? lowest() : std::numeric_limits<double>::quiet_NaN(); }
  double max() const { return count() ? highest() : std::numeric_limits<double>::quiet_NaN(); }

  // The approximate fraction of the stream <= x.
  double rank(double x) const {
    const uint64_t n = count();
    if (n == 0) return std::numeric_limits<double>::quiet_NaN();
    uint64_t below = 0;
    for (size_t h = 0; h < levels_.size(); ++h) {
      uint64_t c = 0;
      for (double v : levels_[h]) c += v <= x;
      below += c << h;
    }
    return static_cast<double>(below) / static_cast<double>(n);
  }

  // The retained items, sorted, each with its weight: the distribution the sketch stands for
  // (statistics such as KS and Wasserstein are computed on it directly).
  std::vector<std::pair<double, uint64_t>> sorted_view() const {
    std::vector<std::pair<double, uint64_t>> items;
    items.reserve(retained());
    for (size_t h = 0; h < levels_.size(); ++h)
      for (double v : levels_[h]) items.emplace_back(v, uint64_t{1} << h);
    std::sort(items.begin(), items.end());
    return items;
  }

  // The approximate value at fraction q of the stream (q in [0, 1]; 0 is min, 1 is max).
  double quantile(double q) const {
    const uint64_t n = count();
    if (n == 0) return std::numeric_limits<double>::quiet_NaN();
    if (!(q >= 0.0 && q <= 1.0)) throw std::invalid_argument("KllSketch: quantile must be in [0, 1]");
    if (q == 0.0) return lowest();
    if (q == 1.0) return highest();
    std::vector<std::pair<double, uint64_t>> items;
    items.reserve(retained());
    for (size_t h = 0; h < levels_.size(); ++h)
      for (double v : levels_[h]) items.emplace_back(v, uint64_t{1} << h);
    std::sort(items.begin(), items.end());
    const double target = q * static_cast<double>(n);
    uint64_t seen = 0;
    for (const auto& [value, weight] : items) {
      seen += weight;
      if (static_cast<double>(seen) >= target) return value;
    }
    return highest();
  }

  // Levels are written as held (level 0 in arrival order, the others as their sorted runs),
  // so a round trip is byte-identical; the format is unchanged.
  std::vector<uint8_t> serialize() const {
    Writer w;
    w.put(kFormat);
    w.put(k_);
    w.put(count());
    w.put(lowest());
    w.put(highest());
    w.put(rng_);
    w.put(static_cast<uint32_t>(levels_.size()));
    for (const auto& level : levels_) {
      w.put(static_cast<uint32_t>(level.size()));
      for (double v : level) w.put(v);
    }
    return w.take();
  }

  static KllSketch deserialize(const uint8_t* data, size_t size) {
    Reader r(data, size, "KllSketch");
    if (r.get<uint8_t>() != kFormat) throw std::invalid_argument("KllSketch: unknown serialization format");
    KllSketch s(r.get<uint16_t>());
    const uint64_t n = r.get<uint64_t>();
    s.min_ = r.get<double>();
    s.max_ = r.get<double>();
    s.rng_ = r.get<uint64_t>();  // as it was, so a round trip is byte-identical
    if (s.rng_ == 0) throw std::invalid_argument("KllSketch: corrupt random state");
    const uint32_t depth = r.get<uint32_t>();
    if (depth == 0 || depth > 64) throw std::invalid_argument("KllSketch: corrupt level count");
    while (s.levels_.size() < depth) s.add_level();
    uint64_t weight = 0;
    for (uint32_t h = 0; h < depth; ++h) {
      const uint32_t count = r.get<uint32_t>();
      if (count > size / sizeof(double)) throw std::invalid_argument("KllSketch: corrupt level size");
      std::vector<double>& level = s.levels_[h];
      level.reserve(count);
      for (uint32_t i = 0; i < count; ++i) {
        const double v = r.get<double>();
        // Merging relies on a consistent order: a NaN, or an item outside [min, max], is corrupt.
        if (!(v >= s.min_ && v <= s.max_)) throw std::invalid_argument("KllSketch: corrupt item");
        if (h > 0 && i > 0 && v < level.back()) s.runs_[h].push_back(i);  // a new sorted run starts
        level.push_back(v);
      }
      if (h > 0 && count > 0) s.runs_[h].push_back(count);
      const uint64_t w = static_cast<uint64_t>(count) << h;
      if ((w >> h) != count || weight + w < weight)
        throw std::invalid_argument("KllSketch: levels do not add up to the count");
      weight += w;
      if (h > 0) {
        s.upper_weight_ += w;
        s.upper_retained_ += count;
      }
    }
    r.expect_end();
    if (weight != n) throw std::invalid_argument("KllSketch: levels do not add up to the count");
    s.set_level0_limit();
    return s;
  }

 private:
  // min and max: of what has left level 0 (or came in by merge or deserialize), and level 0.
  double lowest() const {
    double lo = min_;
    for (double v : levels_[0]) lo = std::min(lo, v);
    return lo;
  }
  double highest() const {
    double hi = max_;
    for (double v : levels_[0]) hi = std::max(hi, v);
    return hi;
  }

  // Compress when the retained items pass the total capacity, or level 0 its most
  // (kLevel0Most, or its capacity if more): when level 0 reaches this size.
  void set_level0_limit() {
    const size_t lazy = total_capacity_ >= upper_retained_ ? total_capacity_ - upper_retained_ + 1 : 0;
    level0_limit_ = std::min(lazy, std::max<size_t>(capacities_[0], kLevel0Most));
  }

  // Level h of H holds at most k * (2/3)^(H-1-h) items (the top level k), and never fewer
  // than kMinWidth: low levels are cheap and absorb the stream. Level 0 never fewer than
  // kLevel0Width.
  uint32_t capacity(size_t h) const {
    const double depth = static_cast<double>(levels_.size() - 1 - h);
    const uint32_t width = std::max(kMinWidth, static_cast<uint32_t>(std::ceil(k_ * std::pow(2.0 / 3.0, depth))));
    return h == 0 ? std::max(width, kLevel0Width) : width;
  }

  // Capacities change only when a level is added, so their sum is kept rather than
  // recomputed (with a pow() per level) on every update.
  void add_level() {
    levels_.emplace_back();
    runs_.emplace_back();
    capacities_.resize(levels_.size());
    total_capacity_ = 0;
    for (size_t h = 0; h < levels_.size(); ++h) {
      capacities_[h] = capacity(h);
      levels_[h].reserve(capacities_[h] + 1);
      total_capacity_ += capacities_[h];
    }
    set_level0_limit();
  }

  bool coin() {  // xorshift64: deterministic for a seed, so runs can be reproduced
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_ & 1;
  }

  // Compacts the lowest full level: sorts it and promotes every other item (from a random
  // offset) to the level above, where each weighs twice as much.
  void compress() {
    size_t h = 0;
    while (h < levels_.size() && levels_[h].size() < capacities_[h]) ++h;
    if (h == levels_.size()) h = levels_.size() - 1;
    if (h + 1 == levels_.size()) add_level();
    std::vector<double>& level = levels_[h];
    const size_t size = level.size();
    const double* sorted = h == 0 ? sort_level0() : merge_runs(h);
    if (h == 0 && size > 0) {
      min_ = std::min(min_, sorted[0]);
      max_ = std::max(max_, sorted[size - 1]);
    }
    const size_t pairs = size / 2;
    const size_t offset = coin() ? 1 : 0;
    if (pairs > 0) {  // a sorted run for the level above
      std::vector<double>& above = levels_[h + 1];
      const size_t base = above.size();
      above.resize(base + pairs);
      double* out = above.data() + base;
      for (size_t i = 0; i < pairs; ++i) out[i] = sorted[2 * i + offset];
      runs_[h + 1].push_back(static_cast<uint32_t>(base + pairs));
      upper_retained_ += pairs;
      upper_weight_ += static_cast<uint64_t>(pairs) << (h + 1);
      if (h > 0) {
        upper_retained_ -= 2 * pairs;
        upper_weight_ -= static_cast<uint64_t>(2 * pairs) << h;
      }
    }
    // An odd item out (the largest) stays where it is, at its own weight.
    const bool odd = size % 2 == 1;
    const double left = odd ? sorted[size - 1] : 0.0;
    level.clear();
    runs_[h].clear();
    if (odd) {
      level.push_back(left);
      if (h > 0) runs_[h].push_back(1);
    }
    set_level0_limit();
  }

  // Sorts level 0; returns where the sorted items are (level 0's storage or scratch_).
  // Sorting networks sort blocks (of 16 with SSE2: +inf fills the last one, and sorts after
  // every item), then bottom-up merges join them.
  const double* sort_level0() {
    std::vector<double>& level = levels_[0];
#ifdef __SSE2__
    constexpr size_t kBlock = 16;
    level.resize((level.size() + kBlock - 1) / kBlock * kBlock, std::numeric_limits<double>::infinity());
    const size_t n = level.size();
    double* v = level.data();
    size_t i = 0;
    for (; i + 2 * kBlock <= n; i += 2 * kBlock) sort16x2(v + i);
    if (i < n) {  // one block left: sorted beside a block of +inf
      double pair[2 * kBlock];
      std::copy(v + i, v + n, pair);
      std::fill(pair + kBlock, pair + 2 * kBlock, std::numeric_limits<double>::infinity());
      sort16x2(pair);
      std::copy(pair, pair + kBlock, v + i);
    }
#else
    constexpr size_t kBlock = 8;
    const size_t n = level.size();
    double* v = level.data();
    size_t i = 0;
    for (; i + kBlock <= n; i += kBlock) sort8(v + i);
    for (size_t j = i + 1; j < n; ++j) {  // the last few: insertion sort
      const double x = v[j];
      size_t at = j;
      while (at > i && x < v[at - 1]) {
        v[at] = v[at - 1];
        --at;
      }
      v[at] = x;
    }
#endif
    if (scratch_.size() < n) scratch_.resize(n);
    double* src = v;
    double* dst = scratch_.data();
    for (size_t width = kBlock; width < n; width *= 2) {
      for (size_t start = 0; start < n; start += 2 * width) {
        const size_t na = std::min(width, n - start);
        const size_t nb = std::min(width, n - start - na);
        merge_sorted(src + start, na, src + start + na, nb, dst + start);
      }
      std::swap(src, dst);
    }
    return src;
  }

  // Merges level h's sorted runs pairwise until one is left; returns where it is.
  const double* merge_runs(size_t h) {
    std::vector<double>& level = levels_[h];
    std::vector<uint32_t>& ends = runs_[h];
    const size_t n = level.size();
    if (ends.size() <= 1) return level.data();
    if (scratch_.size() < n) scratch_.resize(n);
    double* src = level.data();
    double* dst = scratch_.data();
    while (ends.size() > 1) {
      size_t out = 0;
      uint32_t start = 0;
      for (size_t r = 0; r < ends.size(); r += 2) {
        const uint32_t mid = ends[r];
        const uint32_t end = r + 1 < ends.size() ? ends[r + 1] : mid;
        merge_sorted(src + start, mid - start, src + mid, end - mid, dst + start);
        ends[out++] = end;
        start = end;
      }
      ends.resize(out);
      std::swap(src, dst);
    }
    return src;
  }

  static void sort2(double& a, double& b) {  // minsd/maxsd: no branch
    const double lo = std::min(a, b);
    b = std::max(a, b);
    a = lo;
  }

  static void sort8(double* v) {  // an optimal network: 19 comparators in 6 rounds
    double a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3], a4 = v[4], a5 = v[5], a6 = v[6], a7 = v[7];
    sort2(a0, a2); sort2(a1, a3); sort2(a4, a6); sort2(a5, a7);
    sort2(a0, a4); sort2(a1, a5); sort2(a2, a6); sort2(a3, a7);
    sort2(a0, a1); sort2(a2, a3); sort2(a4, a5); sort2(a6, a7);
    sort2(a2, a4); sort2(a3, a5);
    sort2(a1, a4); sort2(a3, a6);
    sort2(a1, a2); sort2(a3, a4); sort2(a5, a6);
    v[0] = a0; v[1] = a1; v[2] = a2; v[3] = a3; v[4] = a4; v[5] = a5; v[6] = a6; v[7] = a7;
  }

#ifdef __SSE2__
  // Sorts v[0, 16) and v[16, 32) at once: lane 0 of each register holds the first block,
  // lane 1 the second, so one network (Batcher's odd-even merge sort: 63 comparators in 10
  // rounds) sorts both with minpd/maxpd.
  static void sort16x2(double* v) {
    __m128d a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15;
    transpose_in(v, 0, a0, a1);
    transpose_in(v, 2, a2, a3);
    transpose_in(v, 4, a4, a5);
    transpose_in(v, 6, a6, a7);
    transpose_in(v, 8, a8, a9);
    transpose_in(v, 10, a10, a11);
    transpose_in(v, 12, a12, a13);
    transpose_in(v, 14, a14, a15);
    sort2(a0, a1); sort2(a2, a3); sort2(a4, a5); sort2(a6, a7); sort2(a8, a9); sort2(a10, a11); sort2(a12, a13); sort2(a14, a15);
    sort2(a0, a2); sort2(a1, a3); sort2(a4, a6); sort2(a5, a7); sort2(a8, a10); sort2(a9, a11); sort2(a12, a14); sort2(a13, a15);
    sort2(a1, a2); sort2(a5, a6); sort2(a0, a4); sort2(a3, a7); sort2(a9, a10); sort2(a13, a14); sort2(a8, a12); sort2(a11, a15);
    sort2(a2, a6); sort2(a1, a5); sort2(a10, a14); sort2(a9, a13); sort2(a0, a8); sort2(a7, a15);
    sort2(a2, a4); sort2(a3, a5); sort2(a10, a12); sort2(a11, a13);
    sort2(a1, a2); sort2(a3, a4); sort2(a5, a6); sort2(a9, a10); sort2(a11, a12); sort2(a13, a14);
    sort2(a4, a12); sort2(a2, a10); sort2(a6, a14); sort2(a1, a9); sort2(a5, a13); sort2(a3, a11);
    sort2(a4, a8); sort2(a6, a10); sort2(a5, a9); sort2(a7, a11);
    sort2(a2, a4); sort2(a6, a8); sort2(a10, a12); sort2(a3, a5); sort2(a7, a9); sort2(a11, a13);
    sort2(a1, a2); sort2(a3, a4); sort2(a5, a6); sort2(a7, a8); sort2(a9, a10); sort2(a11, a12); sort2(a13, a14);
    transpose_out(v, 0, a0, a1);
    transpose_out(v, 2, a2, a3);
    transpose_out(v, 4, a4, a5);
    transpose_out(v, 6, a6, a7);
    transpose_out(v, 8, a8, a9);
    transpose_out(v, 10, a10, a11);
    transpose_out(v, 12, a12, a13);
    transpose_out(v, 14, a14, a15);
  }
  static void sort2(__m128d& a, __m128d& b) {
    const __m128d lo = _mm_min_pd(a, b);
    b = _mm_max_pd(a, b);
    a = lo;
  }
  static void transpose_in(const double* v, size_t at, __m128d& even, __m128d& odd) {
    const __m128d first = _mm_loadu_pd(v + at), second = _mm_loadu_pd(v + 16 + at);
    even = _mm_unpacklo_pd(first, second);
    odd = _mm_unpackhi_pd(first, second);
  }
  static void transpose_out(double* v, size_t at, __m128d even, __m128d odd) {
    _mm_storeu_pd(v + at, _mm_unpacklo_pd(even, odd));
    _mm_storeu_pd(v + 16 + at, _mm_unpackhi_pd(even, odd));
  }
#endif

  // One merge of sorted a[i, ea) and b[j, eb) into [front, back), taking the smallest from
  // the front and the largest from the back at once, with selects rather than jumps. Ties go
  // to a first, so front and back agree on one order and meet without overlap (items are never
  // NaN: update and deserialize see to it). In safe() steps neither end can use up either run,
  // so steps need no bounds checks.
  struct Merging {
    const double* a;
    const double* b;
    size_t i, ea, j, eb;
    double* front;
    double* back;

    size_t safe() const { return std::min(ea - i, eb - j); }
    void step() {
      const double x = a[i], y = b[j];
      const bool take_b = y < x;
      *front++ = take_b ? y : x;
      i += !take_b;
      j += take_b;
      const double p = a[ea - 1], q = b[eb - 1];
      const bool take_a = q < p;
      *--back = take_a ? p : q;
      ea -= take_a;
      eb -= !take_a;
    }
    void finish() {
      for (size_t steps = safe(); steps > 2; steps = safe())
        for (size_t s = 0; s < steps; ++s) step();
      // One run is down to a few items: they are placed by binary search, and the other
      // run's stretches between them copied.
      if (ea - i <= eb - j) {
        for (; i < ea; ++i) {
          const double x = a[i];
          const double* to = std::lower_bound(b + j, b + eb, x);
          front = std::copy(b + j, to, front);
          j = static_cast<size_t>(to - b);
          *front++ = x;
        }
        std::copy(b + j, b + eb, front);
      } else {
        for (; j < eb; ++j) {
          const double y = b[j];
          const double* to = std::upper_bound(a + i, a + ea, y);
          front = std::copy(a + i, to, front);
          i = static_cast<size_t>(to - a);
          *front++ = y;
        }
        std::copy(a + i, a + ea, front);
      }
    }
  };

  // Merges sorted a[0, na) and b[0, nb) into out (apart from both). A merge step waits on the
  // one before (load, compare, advance), so longer merges are split where the first half of the
  // output ends (a binary search) and the halves merged together: four chains at once.
  static void merge_sorted(const double* a, size_t na, const double* b, size_t nb, double* out) {
    const size_t n = na + nb;
    if (n < 32) {
      Merging{a, b, 0, na, 0, nb, out, out + n}.finish();
      return;
    }
    const size_t half = n / 2;
    // ia: how many of a's items are in the first half; the least with a[ia] > b[half - ia - 1].
    size_t lo = half > nb ? half - nb : 0, hi = std::min(na, half);
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (b[half - mid - 1] < a[mid])
        hi = mid;
      else
        lo = mid + 1;
    }
    const size_t ia = lo, jb = half - lo;
    Merging first{a, b, 0, ia, 0, jb, out, out + half};
    Merging second{a, b, ia, na, jb, nb, out + half, out + n};
    for (size_t steps = std::min(first.safe(), second.safe()); steps > 2;
         steps = std::min(first.safe(), second.safe()))
      for (size_t s = 0; s < steps; ++s) {
        first.step();
        second.step();
      }
    first.finish();
    second.finish();
  }

  uint16_t k_;
  uint64_t upper_weight_ = 0;   // of levels 1 and up: the count is this and level 0's size
  size_t upper_retained_ = 0;  // items in levels 1 and up
  size_t total_capacity_ = 0;
  size_t level0_limit_ = 0;
  std::vector<uint32_t> capacities_;  // capacity(h), kept while the depth stays
  double min_ = std::numeric_limits<double>::infinity();  // see lowest() and highest()
  double max_ = -std::numeric_limits<double>::infinity();
  uint64_t rng_;
  std::vector<std::vector<double>> levels_;  // level h: items of weight 2^h
  std::vector<std::vector<uint32_t>> runs_;  // level h > 0: where each of its sorted runs ends
  std::vector<double> scratch_;              // merge space, kept between compactions
};

}  // namespace loopserve::sketches
