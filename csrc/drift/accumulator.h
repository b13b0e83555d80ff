// Drift accumulators for one tensor: the monitored columns of a [rows, cols] batch go into
// per-feature sketches: numeric columns into a BinnedHistogram (over the reference's edges),
// MomentsSketch, KllSketch and Extremes; categorical columns (integer codes) into CategoryCounts.
//
// Speed is the point: the monitor sees every row the server serves. Rows are taken in
// blocks that stay in L1 (gathered straight into the feature's ExactValues while the window
// keeps its values exactly); per block each numeric column is binned by comparing against all
// edges (branch-free, vectorizable), and its moments are reduced in two passes. The KLL
// sketch, the one costly update, takes each row with probability 1 / `kll_every` (a Bernoulli
// sample, drawn independently of the values and of their order, so periodic traffic cannot
// bias it), but only once the window stops keeping every value (ExactValues, up to
// `exact_capacity` rows): until then KS and Wasserstein come from the values themselves
// (loopserve/monitor/exact_window.py), and the kept values are sampled into the sketch when they
// are let go. From the sample, their error bounds count its sampling error (see
// loopserve/monitor/statistics.py). The binned statistics count every row exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "dtype.h"
#include "sketches/category_counts.h"
#include "sketches/exact_values.h"
#include "sketches/extremes.h"
#include "sketches/histogram.h"
#include "sketches/kll_sketch.h"
#include "sketches/moments_sketch.h"

namespace loopserve::drift {

struct NumericColumn {
  int64_t column = 0;
  std::vector<double> edges;  // interior bin edges, strictly increasing
};

struct CategoricalColumn {
  int64_t column = 0;
  uint32_t slots = 0;          // reference categories; slot `slots` is "other"
  std::vector<int32_t> lut;    // code -> slot
};

struct AccumulatorSpec {
  std::vector<NumericColumn> numeric;
  std::vector<CategoricalColumn> categorical;
  uint32_t kll_every = 1;  // the quantile sketches take each row with probability 1 / kll_every
  // k = 400 (rank error ~0.67%) rather than the sketch's default 200: KS's margin and
  // Wasserstein's bounds grow with the rank error.
  static constexpr uint16_t kDefaultKllK = 400;
  uint16_t kll_k = kDefaultKllK;
  // Each numeric feature's largest and smallest values kept exactly (Wasserstein's tails).
  uint32_t extremes_k = sketches::Extremes::kDefaultK;
  // Each numeric feature's values kept exactly while a window holds at most this many rows
  // (0: never): KS and Wasserstein-1 then come from every value, not from the KLL sample.
  uint64_t exact_capacity = sketches::ExactValues::kDefaultCapacity;

  int64_t min_columns() const;  // a batch needs at least this many columns
};

// Not thread-safe: one owner updates it (the monitor's thread); copies are independent.
class TensorAccumulator {
 public:
  explicit TensorAccumulator(std::shared_ptr<const AccumulatorSpec> spec);

  // Adds `rows` rows of a row-major [rows, cols] tensor. Throws std::invalid_argument for a
  // dtype other than FP32, FP64, INT32, INT64 or too few columns.
  void update(DType dtype, const void* data, int64_t rows, int64_t cols);
  void merge(const TensorAccumulator& other);

  // Adds `rows` rows summarized elsewhere (the GPU kernels), with the same result as update()
  // on them except for the moments' and bin sums' rounding: per numeric feature f its bin counts
  // (bins[f * bins_stride + b], b <= its edges) and the sums of their values (sums, laid out
  // the same), non-finite count, moments (n, mean, m2, min,
  // max), and the rows its quantile sketch samples, in row order (samples[i * numeric + f],
  // `n_samples` rows; non-finite values are passed over as update() does); per categorical
  // column c its slot counts (cat_counts[c * cat_stride + slot]) and missing count.
  struct Parts {
    uint64_t rows = 0;
    const int64_t* bins = nullptr;
    const double* sums = nullptr;  // the sum of each bin's values, laid out as bins
    size_t bins_stride = 0;
    const int64_t* missing = nullptr;
    const int64_t* n = nullptr;
    const double *mean = nullptr, *m2 = nullptr, *min = nullptr, *max = nullptr;
    const double* samples = nullptr;
    size_t n_samples = 0;
    const int64_t* cat_counts = nullptr;
    size_t cat_stride = 0;
    const int64_t* cat_missing = nullptr;
    // Per numeric feature f, candidates for its extremes (top[f * extremes_stride + i], i <
    // extremes_stride, and bottom the same): at least its k largest and k smallest finite values
    // among the rows (values not finite are passed over).
    const double *top = nullptr, *bottom = nullptr;
    size_t extremes_stride = 0;
    // Every row's numeric features (values[r * numeric + f], in row order; one of the two, in the
    // type update() would keep them in), or neither: with them the window keeps its values as
    // update() would, while they fit, and the samples are not needed.
    const float* values_f32 = nullptr;
    const double* values_f64 = nullptr;
  };
  void absorb(const Parts& parts);
  // The rows among the next `rows` that the quantile sketches take (indices from 0), drawn as
  // update() draws them, moving the sample on: the GPU path gathers exactly these rows.
  std::vector<uint64_t> sample_rows(uint64_t rows);

  uint64_t rows() const { return rows_; }
  const AccumulatorSpec& spec() const { return *spec_; }
  const sketches::BinnedHistogram& histogram(size_t i) const { return histograms_.at(i); }
  const sketches::MomentsSketch& moments(size_t i) const { return moments_.at(i); }
  // A sample of the values not kept exactly: empty while exact_values(i) is complete.
  const sketches::KllSketch& quantiles(size_t i) const { return quantiles_.at(i); }
  const sketches::CategoryCounts& categories(size_t i) const { return categories_.at(i); }
  const sketches::Extremes& extremes(size_t i) const { return extremes_.at(i); }
  const sketches::ExactValues& exact_values(size_t i) const { return exact_.at(i); }
  // Lets the values kept exactly go (an older closed window), sampled into the KLL sketches first:
  // the statistics fall back to the sample.
  void drop_exact_values();
  // False for an accumulator read from the format before extremes were kept (or merged with one).
  bool extremes_known() const { return extremes_known_; }

  std::vector<uint8_t> serialize() const;
  static TensorAccumulator deserialize(const uint8_t* data, size_t size);

 private:
  template <typename T>
  void update_typed(const T* data, int64_t rows, int64_t cols);
  uint64_t kll_gap();  // rows to pass over before the next sampled one
  // Feature f's kept values go into its KLL sample and are dropped.
  void spill_exact_values(size_t f);
  void sample_into_quantiles(size_t f, const sketches::ExactValues& values);
  template <typename C>
  void keep_column(size_t f, const C* values, uint64_t rows, size_t stride);  // absorb()'s values

  std::shared_ptr<const AccumulatorSpec> spec_;
  uint64_t rows_ = 0;
  uint64_t kll_rng_;  // xorshift64 state of the quantile sketches' row sample
  double kll_log_skip_ = 0.0;  // ln(1 - 1 / kll_every)
  uint64_t kll_skip_ = 0;  // rows to pass over before the next sampled one
  std::vector<sketches::BinnedHistogram> histograms_;
  std::vector<std::vector<float>> edges_f32_;  // each feature's edges rounded up to float32, for FP32 batches
  // Per-call scratch, kept so an update of a small batch allocates nothing.
  std::vector<std::vector<uint64_t>> at_least_;
  std::vector<std::vector<double>> bin_sums_;
  std::vector<uint64_t> block_at_least_;  // one block's counts and sums of d at or above each edge
  std::vector<double> block_sums_;
  std::vector<uint64_t> finite_, pos_inf_, seen_;
  std::vector<std::vector<double>> sampled_;  // per feature: this call's sampled finite values
  std::vector<size_t> sampled_count_;         // how many of sampled_[f] are filled
  std::vector<sketches::MomentsSketch> moments_;
  std::vector<sketches::KllSketch> quantiles_;
  std::vector<sketches::CategoryCounts> categories_;
  std::vector<sketches::Extremes> extremes_;
  std::vector<sketches::ExactValues> exact_;
  bool extremes_known_ = true;
};

}  // namespace loopserve::drift
