#include "drift/accumulator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace loopserve::drift {

namespace {

constexpr int64_t kBlock = 256;  // rows per block: a block of one column's doubles stays in L1
constexpr uint8_t kFormat = 3;  // 1: without extremes; 2: without exact values
constexpr size_t kSampleFlush = 4096;  // sampled values a feature gathers before they go into its sketch

void put_blob(sketches::Writer& w, const std::vector<uint8_t>& bytes) {
  w.put(static_cast<uint64_t>(bytes.size()));
  for (uint8_t b : bytes) w.put(b);
}

}  // namespace

// Edges in the type values are compared in. For float values an edge is rounded up to the
// nearest float: for a float v, v >= e exactly when v >= (smallest float >= e), so the
// counts equal those of the double comparison.
template <typename C>
std::vector<C> edges_for(const std::vector<double>& edges) {
  std::vector<C> out(edges.size());
  for (size_t k = 0; k < edges.size(); ++k) {
    C e = static_cast<C>(edges[k]);
    if (static_cast<double>(e) < edges[k]) e = std::nextafter(e, std::numeric_limits<C>::infinity());
    out[k] = e;
  }
  return out;
}

// Rows to pass over before the next sampled one: Geometric(1 / kll_every) on {0, 1, ...}.
uint64_t TensorAccumulator::kll_gap() {
  if (spec_->kll_every == 1) return 0;
  kll_rng_ ^= kll_rng_ << 13;
  kll_rng_ ^= kll_rng_ >> 7;
  kll_rng_ ^= kll_rng_ << 17;
  const double u = static_cast<double>((kll_rng_ >> 11) + 1) * 0x1.0p-53;  // in (0, 1]
  return static_cast<uint64_t>(std::min(std::floor(std::log(u) / kll_log_skip_), 1e15));
}

int64_t AccumulatorSpec::min_columns() const {
  int64_t n = 0;
  for (const auto& c : numeric) n = std::max(n, c.column + 1);
  for (const auto& c : categorical) n = std::max(n, c.column + 1);
  return n;
}

TensorAccumulator::TensorAccumulator(std::shared_ptr<const AccumulatorSpec> spec)
    : spec_(std::move(spec)), kll_rng_(0x2545F4914F6CDD1Dull) {
  if (spec_->kll_every == 0) throw std::invalid_argument("drift accumulator: kll_every must be at least 1");
  kll_log_skip_ = std::log1p(-1.0 / spec_->kll_every);
  kll_skip_ = kll_gap();
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  for (const auto& c : spec_->numeric) {
    if (c.column < 0) throw std::invalid_argument("drift accumulator: negative column index");
    histograms_.emplace_back(c.edges);
    edges_f32_.push_back(edges_for<float>(c.edges));
    block_at_least_.resize(std::max(block_at_least_.size(), c.edges.size()));
    block_sums_.resize(std::max(block_sums_.size(), c.edges.size()));
    at_least_.emplace_back(c.edges.size());
    bin_sums_.emplace_back(c.edges.size() + 1);
    sampled_.emplace_back(kSampleFlush + kBlock);
    sampled_count_.push_back(0);
    moments_.emplace_back();
    quantiles_.emplace_back(spec_->kll_k, seed += 0x632BE59BD9B4E019ull);  // independent coins per feature
    extremes_.emplace_back(spec_->extremes_k);
    exact_.emplace_back(spec_->exact_capacity);
  }
  for (const auto& c : spec_->categorical) {
    if (c.column < 0) throw std::invalid_argument("drift accumulator: negative column index");
    categories_.emplace_back(c.slots, c.lut);
  }
}

void TensorAccumulator::update(DType dtype, const void* data, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("drift accumulator: negative shape");
  if (cols < spec_->min_columns())
    throw std::invalid_argument("drift accumulator: the tensor has " + std::to_string(cols) +
                                " columns, the profile monitors column " + std::to_string(spec_->min_columns() - 1));
  switch (dtype) {
    case DType::kFP32: return update_typed(static_cast<const float*>(data), rows, cols);
    case DType::kFP64: return update_typed(static_cast<const double*>(data), rows, cols);
    case DType::kInt32: return update_typed(static_cast<const int32_t*>(data), rows, cols);
    case DType::kInt64: return update_typed(static_cast<const int64_t*>(data), rows, cols);
    default:
      throw std::invalid_argument("drift accumulator: cannot monitor a " + std::string(dtype_name(dtype)) +
                                  " tensor; expected FP32, FP64, INT32 or INT64");
  }
}

// Hot loops get an AVX2 clone beside the baseline one, picked at load time (an ifunc). Not under
// ThreadSanitizer: its runtime is not up yet when the loader runs ifunc resolvers.
#if defined(__SANITIZE_THREAD__)
#define LOOPSERVE_WITH_AVX2
#else
#define LOOPSERVE_WITH_AVX2 __attribute__((target_clones("avx2", "default")))
#endif

namespace {

// The values of one block and one column, in the type they are compared in: float for FP32
// input (exact, see edges_for), double otherwise.
template <typename T>
using CompareType = std::conditional_t<std::is_same_v<T, float>, float, double>;

// For each edge, how many of the m values are >= it (NaN never is; +inf always is), and the sum
// of their `d` (the value less the feature's sum pivot; 0 for a value that is not finite). These
// cumulative counts and sums give each bin's by differences, with no per-value scatter. Written
// with GCC vector extensions (32-byte vectors: AVX2 in the AVX2 clone, two SSE registers in the
// baseline one) since a float sum is a reduction the compiler may not reorder by itself: one
// compare, a subtract (the count) and an and-add (the sum) per vector of values. Sums of d are in
// the compare type, each vector lane over at most kBlock / lanes terms (float for FP32 input:
// relative error ~1e-6 of the values' distances from the pivot, far below what the Wasserstein
// estimate needs), added up in double per block.
constexpr int kSumLanes = 8;  // blocks are padded to a multiple of this (NaN values, d = 0)

typedef float F32x8 __attribute__((vector_size(32)));
typedef int32_t I32x8 __attribute__((vector_size(32)));
typedef double F64x4 __attribute__((vector_size(32)));
typedef int64_t I64x4 __attribute__((vector_size(32)));

template <typename C>
struct Vectors;
template <>
struct Vectors<float> {
  static constexpr int kWidth = 8;
  using Value = F32x8;
  using Mask = I32x8;
};
template <>
struct Vectors<double> {
  static constexpr int kWidth = 4;
  using Value = F64x4;
  using Mask = I64x4;
};

// G edges at once: each vector of values is loaded once for G edges, whose broadcasts, counts
// and sums stay in registers (G = 5 needs 17 of AVX2's 16, yet measured faster than 4 on the
// 10-bin benchmark), rather than once per edge. Each lane adds its terms in the same order as
// one edge at a time would, so the sums are the same bit for bit.
template <int G, typename C>
inline __attribute__((always_inline)) void count_and_sum_edges(const C* values, const C* d, int64_t m,
                                                               const C* edges, uint64_t* at_least,
                                                               double* sum_at_least) {
  using V = typename Vectors<C>::Value;
  using M = typename Vectors<C>::Mask;
  constexpr int W = Vectors<C>::kWidth;
  V e[G], s[G];
  M c[G];
  for (int j = 0; j < G; ++j) e[j] = V{} + edges[j], s[j] = V{}, c[j] = M{};  // broadcast
  for (int64_t i = 0; i < m; i += W) {
    V v, x;
    std::memcpy(&v, values + i, sizeof v);
    std::memcpy(&x, d + i, sizeof x);
    for (int j = 0; j < G; ++j) {
      const M ge = v >= e[j];  // all ones where v >= e
      c[j] -= ge;
      s[j] += (V)((M)x & ge);  // vector casts reinterpret the bits
    }
  }
  for (int j = 0; j < G; ++j) {
    uint64_t count = 0;
    double total = 0.0;
    for (int l = 0; l < W; ++l) count += static_cast<uint64_t>(c[j][l]), total += static_cast<double>(s[j][l]);
    at_least[j] = count;
    sum_at_least[j] = total;
  }
}

template <typename C>
LOOPSERVE_WITH_AVX2
void count_and_sum_at_least(const C* values, const C* d, int64_t m, const C* edges, size_t n_edges,
                            uint64_t* at_least, double* sum_at_least) {
  constexpr int kGroup = 5;
  size_t k = 0;
  for (; k + kGroup <= n_edges; k += kGroup)
    count_and_sum_edges<kGroup>(values, d, m, edges + k, at_least + k, sum_at_least + k);
  switch (n_edges - k) {  // the rest, also in one pass
    case 4: return count_and_sum_edges<4>(values, d, m, edges + k, at_least + k, sum_at_least + k);
    case 3: return count_and_sum_edges<3>(values, d, m, edges + k, at_least + k, sum_at_least + k);
    case 2: return count_and_sum_edges<2>(values, d, m, edges + k, at_least + k, sum_at_least + k);
    case 1: return count_and_sum_edges<1>(values, d, m, edges + k, at_least + k, sum_at_least + k);
    default: return;
  }
}

// Moments of the finite values among m (at most kBlock), in one pass of sums shifted by a
// pivot (the block's first finite value, so the sums cancel only at the block's spread:
// m2 >= (pivot - mean)^2, and the relative error of m2 stays below m * 2^-53); returns how many
// were +inf, the pivot, and in `d` each value less `sum_pivot` in the compare type (0 where
// not finite), for the bin sums: a fixed pivot per feature (the reference's middle edge), so the
// float difference is off by at most half an ulp of the value's own distance from the median
// (a block's first value may be an outlier). `values` is padded to a multiple of kLanes with
// NaN. Written as simple loops the compiler vectorizes: masks instead of branches, and sums in
// kLanes independent partial sums (a fixed order, so results are reproducible; one running sum
// is a chain of dependent adds that cannot be vectorized).
constexpr int kLanes = 8;
static_assert(kBlock % kLanes == 0 && kLanes == kSumLanes, "blocks are padded to whole lanes");
static_assert(kSumLanes % Vectors<float>::kWidth == 0 && kSumLanes % Vectors<double>::kWidth == 0);

template <typename C>
LOOPSERVE_WITH_AVX2
uint64_t block_moments(const C* values, int64_t m, C sum_pivot, C* d, double* pivot_out, double* shifted_sum_out,
                       uint64_t* n_out, double* mean_out, double* m2_out, double* lo_out, double* hi_out) {
  constexpr C kInf = std::numeric_limits<C>::infinity();
  const int64_t padded = (m + kLanes - 1) / kLanes * kLanes;
  C pivot_c = C(0);
  for (int64_t i = 0; i < m; ++i)
    if (values[i] - values[i] == C(0)) {
      pivot_c = values[i];
      break;
    }
  const double pivot = static_cast<double>(pivot_c);

  alignas(32) C clean[kBlock], mask[kBlock];  // a value not finite becomes the pivot, with mask 0
  for (int64_t i = 0; i < padded; ++i) {
    const C v = values[i];
    const bool finite = v - v == C(0);
    clean[i] = finite ? v : pivot_c;
    mask[i] = finite ? C(1) : C(0);
    d[i] = (clean[i] - sum_pivot) * mask[i];
  }
  double sum[kLanes] = {}, squares[kLanes] = {}, count[kLanes] = {};
  for (int64_t i = 0; i < padded; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double x = static_cast<double>(clean[i + j]) - pivot;
      sum[j] += x;
      squares[j] += x * x;
      count[j] += static_cast<double>(mask[i + j]);
    }
  // Min and max over the raw values: a NaN compares false and is passed over; an infinity
  // would win, so the rare block that holds one is redone below on its finite values. In vector
  // selects: written per lane, the compiler keeps this loop scalar (a NaN must not win).
  using V = typename Vectors<C>::Value;
  constexpr int W = Vectors<C>::kWidth;
  V lo_v[kLanes / W], hi_v[kLanes / W];
  for (int u = 0; u < kLanes / W; ++u) lo_v[u] = V{} + kInf, hi_v[u] = V{} - kInf;
  for (int64_t i = 0; i < padded; i += kLanes)
    for (int u = 0; u < kLanes / W; ++u) {
      V v;
      std::memcpy(&v, values + i + u * W, sizeof v);
      lo_v[u] = v < lo_v[u] ? v : lo_v[u];
      hi_v[u] = v > hi_v[u] ? v : hi_v[u];
    }
  C lo[kLanes], hi[kLanes];
  for (int j = 0; j < kLanes; ++j) lo[j] = lo_v[j / W][j % W], hi[j] = hi_v[j / W][j % W];
  double total = 0.0, sq = 0.0, n = 0.0;
  C low = kInf, high = -kInf;
  for (int j = 0; j < kLanes; ++j) {
    total += sum[j];
    sq += squares[j];
    n += count[j];
    low = lo[j] < low ? lo[j] : low;
    high = hi[j] > high ? hi[j] : high;
  }
  uint64_t pos_inf = 0;
  if (n < static_cast<double>(m)) {  // some value was not finite: count +inf, redo min and max
    low = kInf, high = -kInf;
    for (int64_t i = 0; i < m; ++i) {
      const C v = values[i];
      pos_inf += v == kInf;
      if (v - v == C(0)) low = std::min(low, v), high = std::max(high, v);
    }
  }
  const double shift = n > 0 ? total / n : 0.0;
  *pivot_out = pivot;
  *shifted_sum_out = total;
  *n_out = static_cast<uint64_t>(n);
  *mean_out = n > 0 ? pivot + shift : 0.0;
  *m2_out = std::max(sq - total * shift, 0.0);
  *lo_out = static_cast<double>(low);
  *hi_out = static_cast<double>(high);
  return pos_inf;
}

// Indices of the values among m (padded with NaN to whole vectors) above `bound` (or, with
// `below`, under it): the candidates for one side of a feature's extremes. One compare per
// vector; only a vector holding a candidate is looked at lane by lane.
template <bool below, typename C>
LOOPSERVE_WITH_AVX2
size_t extreme_candidates(const C* values, int64_t padded, C bound, uint16_t* out) {
  using V = typename Vectors<C>::Value;
  using M = typename Vectors<C>::Mask;
  constexpr int W = Vectors<C>::kWidth;
  const V b = V{} + bound;
  size_t n = 0;
  for (int64_t i = 0; i < padded; i += W) {
    V v;
    std::memcpy(&v, values + i, sizeof v);
    const M hit = below ? v < b : v > b;
    uint64_t bits[sizeof(M) / 8];
    std::memcpy(bits, &hit, sizeof bits);
    uint64_t any = 0;
    for (uint64_t x : bits) any |= x;
    if (__builtin_expect(any != 0, 0))
      for (int l = 0; l < W; ++l) out[n] = static_cast<uint16_t>(i + l), n += hit[l] != 0;
  }
  return n;
}

// `bound` in C, rounded outward (down for a lower bound, up for an upper one), so a value
// beyond the double bound is beyond the C one too.
template <typename C>
C outward(double bound, bool down) {
  C c = static_cast<C>(bound);
  const C inf = std::numeric_limits<C>::infinity();
  if (down && static_cast<double>(c) > bound) c = std::nextafter(c, -inf);
  if (!down && static_cast<double>(c) < bound) c = std::nextafter(c, inf);
  return c;
}

}  // namespace

template <typename T>
void TensorAccumulator::update_typed(const T* data, int64_t rows, int64_t cols) {
  using C = CompareType<T>;
  alignas(32) C scratch[kBlock], d[kBlock];
  uint64_t* block_at_least = block_at_least_.data();
  double* block_sums = block_sums_.data();
  const size_t features = spec_->numeric.size();

  // Per feature: its edges in the compare type (made once, in the constructor), and this
  // call's counts of values >= each edge, of finite and +inf values, and of values seen.
  auto edges_of = [&](size_t f) -> const std::vector<C>& {
    if constexpr (std::is_same_v<C, float>) return edges_f32_[f];
    else return spec_->numeric[f].edges;
  };
  std::vector<std::vector<uint64_t>>& at_least = at_least_;
  for (auto& counts : at_least) std::fill(counts.begin(), counts.end(), 0);
  for (auto& sums : bin_sums_) std::fill(sums.begin(), sums.end(), 0.0);
  finite_.assign(features, 0);
  pos_inf_.assign(features, 0);
  seen_.assign(features, 0);
  std::vector<uint64_t>&finite = finite_, &pos_inf = pos_inf_, &seen = seen_;
  for (auto& values : exact_) values.template expect<C>(static_cast<size_t>(rows), kSumLanes);

  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t m = std::min(kBlock, rows - r0);
    const int64_t padded = (m + kSumLanes - 1) / kSumLanes * kSumLanes;
    const T* block = data + r0 * cols;

    // The block's sampled rows, drawn once for all features (a row is sampled whole): the gaps
    // between sampled rows of a Bernoulli(1 / kll_every) sample are geometric, so one random
    // draw per sampled row, not per row.
    uint16_t picked[kBlock];
    size_t n_picked = 0;
    uint64_t i = kll_skip_;
    for (; i < static_cast<uint64_t>(m); i += 1 + kll_gap()) picked[n_picked++] = static_cast<uint16_t>(i);
    kll_skip_ = i - static_cast<uint64_t>(m);

    // The next block's rows are fetched while this one is worked on, a share per feature: the
    // first feature's strided gather would otherwise wait on memory for every row.
    const char* next = reinterpret_cast<const char*>(block + m * cols);
    const size_t next_bytes = static_cast<size_t>(std::min(kBlock, rows - r0 - m)) * static_cast<size_t>(cols) * sizeof(T);
    const size_t share = (next_bytes / std::max<size_t>(features, 1) + 63) & ~size_t{63};
    for (size_t f = 0; f < features; ++f) {
      for (size_t b = f * share; b < std::min(next_bytes, (f + 1) * share); b += 64) __builtin_prefetch(next + b);
      const T* p = block + spec_->numeric[f].column;
      // Gathered where the window keeps its values (the padding is overwritten by the next
      // block), else into scratch: the block is read from there either way, still in L1.
      sketches::ExactValues& exact = exact_[f];
      C* kept = exact.template next<C>(static_cast<size_t>(m), static_cast<size_t>(padded - m));
      if (!kept && exact.complete()) spill_exact_values(f);  // full: from here on the KLL samples
      C* values = kept ? kept : scratch;
      for (int64_t i = 0; i < m; ++i) values[i] = static_cast<C>(p[i * cols]);
      for (int64_t i = m; i < padded; ++i) values[i] = std::numeric_limits<C>::quiet_NaN();

      uint64_t n;
      double pivot, shifted_sum, mean, m2, lo, hi;
      const std::vector<C>& edges = edges_of(f);
      const size_t n_edges = edges.size();
      const C sum_pivot = n_edges ? edges[n_edges / 2] : C(0);
      const uint64_t block_pos_inf =
          block_moments(values, m, sum_pivot, d, &pivot, &shifted_sum, &n, &mean, &m2, &lo, &hi);
      pos_inf[f] += block_pos_inf;
      finite[f] += n;
      seen[f] += static_cast<uint64_t>(m);
      moments_[f].merge(sketches::MomentsSketch::from_parts(n, static_cast<uint64_t>(m) - n, mean, m2, lo, hi));

      // Extremes: a block whose max and min cannot change the kept values (most blocks, once a
      // window has seen a few thousand rows) costs two comparisons.
      sketches::Extremes& extremes = extremes_[f];
      uint16_t candidates[kBlock];
      if (hi > extremes.top_floor())
        extremes.add_top(values, candidates,
                         extreme_candidates<false>(values, padded, outward<C>(extremes.top_floor(), true), candidates));
      if (lo < extremes.bottom_floor())
        extremes.add_bottom(
            values, candidates,
            extreme_candidates<true>(values, padded, outward<C>(extremes.bottom_floor(), false), candidates));

      // Bin b holds the finite values with exactly b edges at or below them: its count is
      // #(>= e_b) - #(>= e_{b+1}) (+inf, >= every edge but missing, taken out), its sum the
      // same difference of sums of d, plus count * sum_pivot.
      count_and_sum_at_least(values, d, padded, edges.data(), n_edges, block_at_least, block_sums);
      std::vector<uint64_t>& cumulative = at_least[f];
      std::vector<double>& sums = bin_sums_[f];
      uint64_t above = n;
      const double pivot_at = static_cast<double>(sum_pivot);
      double above_sum = shifted_sum + static_cast<double>(n) * (pivot - pivot_at);
      for (size_t k = 0; k < n_edges; ++k) {
        cumulative[k] += block_at_least[k];
        const uint64_t next = block_at_least[k] - block_pos_inf;
        sums[k] += (above_sum - block_sums[k]) + static_cast<double>(above - next) * pivot_at;
        above = next;
        above_sum = block_sums[k];
      }
      sums[n_edges] += above_sum + static_cast<double>(above) * pivot_at;

      // Gathered in a fixed buffer (room for kSampleFlush values and one more block) and fed to
      // the sketch in stretches: a few values a block would pay the sketch's per-call cost each time.
      // Not while the window keeps every value: the sketch samples those only if they are dropped.
      double* sampled = sampled_[f].data();
      size_t n_sampled = sampled_count_[f];
      for (size_t j = 0; !kept && j < n_picked; ++j) {
        const double v = static_cast<double>(values[picked[j]]);
        sampled[n_sampled] = v;
        n_sampled += v - v == 0.0;  // finite values only
      }
      if (n_sampled >= kSampleFlush) {
        quantiles_[f].update(sampled, n_sampled);
        n_sampled = 0;
      }
      sampled_count_[f] = n_sampled;
      if (kept) exact.template added<C>(static_cast<size_t>(m));
    }

    for (size_t c = 0; c < spec_->categorical.size(); ++c) {
      sketches::CategoryCounts& counts = categories_[c];
      const T* p = block + spec_->categorical[c].column;
      // A code is the value truncated toward zero; below 0 (after truncation) or not finite is
      // missing. Compared as a double before any conversion: a huge float never becomes an int64.
      const double table = static_cast<double>(counts.lut().size());
      for (int64_t i = 0; i < m; ++i) {
        const double v = static_cast<double>(p[i * cols]);
        if (!(v > -1.0) || v - v != 0.0) {
          counts.add_missing(1);
          continue;
        }
        counts.add(v >= table ? counts.other_slot() : counts.slot_of(static_cast<int64_t>(v)), 1);
      }
    }

    rows_ += static_cast<uint64_t>(m);
  }

  for (size_t f = 0; f < features; ++f) {
    quantiles_[f].update(sampled_[f].data(), sampled_count_[f]);
    sampled_count_[f] = 0;
  }

  for (size_t f = 0; f < features; ++f) {
    sketches::BinnedHistogram& h = histograms_[f];
    const size_t n_edges = at_least[f].size();
    uint64_t above = finite[f];  // #(finite >= e_0), e_0 = -inf
    for (size_t b = 0; b < n_edges; ++b) {
      const uint64_t next = at_least[f][b] - pos_inf[f];
      h.add(b, above - next, bin_sums_[f][b]);
      above = next;
    }
    h.add(n_edges, above, bin_sums_[f][n_edges]);
    h.add_missing(seen[f] - finite[f]);
  }
}

void TensorAccumulator::merge(const TensorAccumulator& other) {
  bool same = other.histograms_.size() == histograms_.size() && other.categories_.size() == categories_.size();
  for (size_t i = 0; same && i < spec_->numeric.size(); ++i) same = spec_->numeric[i].column == other.spec_->numeric[i].column;
  for (size_t i = 0; same && i < spec_->categorical.size(); ++i)
    same = spec_->categorical[i].column == other.spec_->categorical[i].column;
  if (!same) throw std::invalid_argument("drift accumulator: cannot merge accumulators of different profiles");
  for (size_t i = 0; i < histograms_.size(); ++i) {
    histograms_[i].merge(other.histograms_[i]);
    moments_[i].merge(other.moments_[i]);
    extremes_[i].merge(other.extremes_[i]);
    // Each KLL holds a sample of its side's values that are not kept exactly: the union is kept
    // while it fits, else both sides' kept values are sampled into this side's KLL.
    const sketches::ExactValues& theirs = other.exact_[i];
    exact_[i].limit_capacity(theirs.capacity());
    if (theirs.complete() && exact_[i].fits(theirs.size())) {
      exact_[i].append(theirs);
    } else {
      if (exact_[i].complete()) spill_exact_values(i);
      if (theirs.complete()) sample_into_quantiles(i, theirs);
    }
    quantiles_[i].merge(other.quantiles_[i]);
  }
  extremes_known_ = extremes_known_ && other.extremes_known_;
  for (size_t i = 0; i < categories_.size(); ++i) categories_[i].merge(other.categories_[i]);
  rows_ += other.rows_;
}

void TensorAccumulator::absorb(const Parts& p) {
  const size_t features = spec_->numeric.size();
  bool with_values = (p.values_f32 || p.values_f64) && features > 0;
  for (size_t f = 0; with_values && f < features; ++f) with_values = exact_[f].fits(p.rows);
  if (with_values) {
    for (size_t f = 0; f < features; ++f) {
      if (p.values_f32) keep_column(f, p.values_f32, p.rows, features);
      else keep_column(f, p.values_f64, p.rows, features);
    }
  } else {
    drop_exact_values();  // kept values go into the sample, which the parts' samples continue
  }
  std::vector<double> sampled(p.n_samples);
  for (size_t f = 0; f < features; ++f) {
    sketches::BinnedHistogram& h = histograms_[f];
    for (size_t b = 0; b <= spec_->numeric[f].edges.size(); ++b)
      h.add(b, static_cast<uint64_t>(p.bins[f * p.bins_stride + b]), p.sums[f * p.bins_stride + b]);
    h.add_missing(static_cast<uint64_t>(p.missing[f]));
    moments_[f].merge(sketches::MomentsSketch::from_parts(static_cast<uint64_t>(p.n[f]),
                                                          static_cast<uint64_t>(p.missing[f]), p.mean[f], p.m2[f],
                                                          p.min[f], p.max[f]));
    size_t kept = 0;
    for (size_t i = 0; !with_values && i < p.n_samples; ++i) {
      const double v = p.samples[i * features + f];
      sampled[kept] = v;
      kept += v - v == 0.0;  // finite values only, as update() feeds them
    }
    quantiles_[f].update(sampled.data(), kept);
    // Each list to its own side: with fewer than 2k finite values the two lists share values,
    // which add() would keep twice.
    for (size_t i = 0; i < p.extremes_stride; ++i) {
      const double top = p.top ? p.top[f * p.extremes_stride + i] : NAN;
      const double bottom = p.bottom ? p.bottom[f * p.extremes_stride + i] : NAN;
      if (top - top == 0.0) extremes_[f].add_top(top);
      if (bottom - bottom == 0.0) extremes_[f].add_bottom(bottom);
    }
  }
  for (size_t c = 0; c < categories_.size(); ++c) {
    for (uint32_t slot = 0; slot <= categories_[c].other_slot(); ++slot)
      categories_[c].add(slot, static_cast<uint64_t>(p.cat_counts[c * p.cat_stride + slot]));
    categories_[c].add_missing(static_cast<uint64_t>(p.cat_missing[c]));
  }
  sample_rows(p.rows);  // the sample moves on past these rows, as update() would have moved it
  rows_ += p.rows;
}

template <typename C>
void TensorAccumulator::keep_column(size_t f, const C* values, uint64_t rows, size_t stride) {
  C* out = exact_[f].template next<C>(rows, 0);
  if (!out) throw std::logic_error("drift accumulator: no room for the values absorb() checked");
  for (uint64_t r = 0; r < rows; ++r) out[r] = values[r * stride + f];
  exact_[f].template added<C>(rows);
}

void TensorAccumulator::drop_exact_values() {
  for (size_t f = 0; f < exact_.size(); ++f)
    if (exact_[f].complete()) spill_exact_values(f);
}

void TensorAccumulator::spill_exact_values(size_t f) {
  sample_into_quantiles(f, exact_[f]);
  exact_[f].drop();
}

// The same Bernoulli(1 / kll_every) sample update() takes of rows, drawn now over kept values:
// the draws do not depend on the values, so the sketch's sample is uniform over the window
// whether a value was sampled as it came or when the kept values were let go.
void TensorAccumulator::sample_into_quantiles(size_t f, const sketches::ExactValues& values) {
  std::vector<double> sample;
  sample.reserve(values.size() / spec_->kll_every + 16);
  for (uint64_t i = kll_gap(); i < values.size(); i += 1 + kll_gap()) {
    const double v = values.at(i);
    if (v - v == 0.0) sample.push_back(v);
  }
  quantiles_[f].update(sample.data(), sample.size());
}

std::vector<uint64_t> TensorAccumulator::sample_rows(uint64_t rows) {
  std::vector<uint64_t> picked;
  uint64_t i = kll_skip_;
  for (; i < rows; i += 1 + kll_gap()) picked.push_back(i);
  kll_skip_ = i - rows;
  return picked;
}

std::vector<uint8_t> TensorAccumulator::serialize() const {
  sketches::Writer w;
  w.put(kFormat);
  w.put(rows_);
  w.put(spec_->kll_every);
  w.put(spec_->kll_k);
  w.put(static_cast<uint32_t>(histograms_.size()));
  for (size_t i = 0; i < histograms_.size(); ++i) {
    w.put(spec_->numeric[i].column);
    put_blob(w, histograms_[i].serialize());
    put_blob(w, moments_[i].serialize());
    put_blob(w, quantiles_[i].serialize());
    put_blob(w, extremes_[i].serialize());
    put_blob(w, exact_[i].serialize());
  }
  w.put(static_cast<uint32_t>(categories_.size()));
  for (size_t i = 0; i < categories_.size(); ++i) {
    w.put(spec_->categorical[i].column);
    put_blob(w, categories_[i].serialize());
  }
  return w.take();
}

TensorAccumulator TensorAccumulator::deserialize(const uint8_t* data, size_t size) {
  sketches::Reader r(data, size, "TensorAccumulator");
  const uint8_t format = r.get<uint8_t>();
  if (format < 1 || format > kFormat) throw std::invalid_argument("TensorAccumulator: unknown serialization format");
  auto blob = [&](auto decode) {
    const uint64_t n = r.get<uint64_t>();
    if (n > size) throw std::invalid_argument("TensorAccumulator: corrupt length");
    std::vector<uint8_t> bytes(n);
    for (uint8_t& b : bytes) b = r.get<uint8_t>();
    return decode(bytes.data(), bytes.size());
  };
  const uint64_t rows = r.get<uint64_t>();
  auto spec = std::make_shared<AccumulatorSpec>();
  spec->kll_every = r.get<uint32_t>();
  spec->kll_k = r.get<uint16_t>();
  std::vector<sketches::BinnedHistogram> histograms;
  std::vector<sketches::MomentsSketch> moments;
  std::vector<sketches::KllSketch> quantiles;
  std::vector<sketches::CategoryCounts> categories;
  std::vector<sketches::Extremes> extremes;
  std::vector<sketches::ExactValues> exact;
  const uint32_t numeric = r.get<uint32_t>();
  if (numeric > size) throw std::invalid_argument("TensorAccumulator: corrupt feature count");
  auto column_of = [&] {
    const int64_t column = r.get<int64_t>();
    if (column < 0 || column > std::numeric_limits<int32_t>::max())
      throw std::invalid_argument("TensorAccumulator: corrupt column index");
    return column;
  };
  for (uint32_t i = 0; i < numeric; ++i) {
    const int64_t column = column_of();
    histograms.push_back(blob(&sketches::BinnedHistogram::deserialize));
    moments.push_back(blob(&sketches::MomentsSketch::deserialize));
    quantiles.push_back(blob(&sketches::KllSketch::deserialize));
    extremes.push_back(format == 1 ? sketches::Extremes() : blob(&sketches::Extremes::deserialize));
    spec->extremes_k = extremes.back().k();
    exact.push_back(format < 3 ? sketches::ExactValues(0) : blob(&sketches::ExactValues::deserialize));
    spec->exact_capacity = exact.back().capacity();
    spec->numeric.push_back({column, histograms.back().edges()});
  }
  const uint32_t categorical = r.get<uint32_t>();
  if (categorical > size) throw std::invalid_argument("TensorAccumulator: corrupt feature count");
  for (uint32_t i = 0; i < categorical; ++i) {
    const int64_t column = column_of();
    categories.push_back(blob(&sketches::CategoryCounts::deserialize));
    spec->categorical.push_back({column, categories.back().other_slot(), categories.back().lut()});
  }
  r.expect_end();
  // Every update and merge keeps or lets go of all features' values together, each holding one
  // value a row: a payload where they disagree was not made by one.
  for (const auto& values : exact)
    if (values.complete() != exact.front().complete() || values.size() != exact.front().size() ||
        values.capacity() != exact.front().capacity())
      throw std::invalid_argument("TensorAccumulator: features disagree on the values they keep");
  TensorAccumulator acc(std::move(spec));
  acc.rows_ = rows;
  acc.histograms_ = std::move(histograms);
  acc.moments_ = std::move(moments);
  acc.quantiles_ = std::move(quantiles);
  acc.categories_ = std::move(categories);
  acc.extremes_ = std::move(extremes);
  acc.exact_ = std::move(exact);
  acc.extremes_known_ = format != 1;
  return acc;
}

}  // namespace loopserve::drift
