// The drift monitor under ThreadSanitizer and AddressSanitizer (tests/test_native.py): several
// threads hand batches to one monitor while others read its windows and statistics and close
// windows; then every row must be accounted for (seen or skipped), window row counts must add
// up, and accumulators must survive a serialize/deserialize/merge round. Exits non-zero on failure.
#include <atomic>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "drift/accumulator.h"
#include "drift/monitor.h"

using loopserve::DType;
using loopserve::drift::AccumulatorSpec;
using loopserve::drift::DriftMonitor;
using loopserve::drift::MonitorConfig;
using loopserve::drift::TensorAccumulator;

int main() {
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      ++failures;
      std::fprintf(stderr, "FAIL: %s\n", what);
    }
  };
  constexpr int64_t kCols = 5;
  auto inputs = std::make_shared<AccumulatorSpec>();
  inputs->numeric = {{0, {-1.0, 0.0, 1.0}}, {1, {0.5}}, {2, {}}};
  inputs->categorical = {{3, 3, {2, 1, 0}}, {4, 1, {0}}};
  inputs->kll_every = 3;
  auto outputs = std::make_shared<AccumulatorSpec>();
  outputs->numeric = {{0, {0.5}}};

  MonitorConfig config;
  config.window_rows = 777;
  config.window_seconds = 0.05;
  config.history = 1000;
  config.queue_rows = 2000;  // small: some batches are skipped while the monitor catches up
  auto monitor = std::make_shared<DriftMonitor>(config, inputs, outputs);

  constexpr int kWriters = 4, kBatches = 300;
  std::atomic<int64_t> offered{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(static_cast<uint64_t>(w));
      std::normal_distribution<float> normal;
      std::uniform_int_distribution<int64_t> rows_of(1, 64);
      for (int b = 0; b < kBatches; ++b) {
        const int64_t rows = rows_of(rng);
        std::vector<float> x(static_cast<size_t>(rows * kCols)), y(static_cast<size_t>(rows));
        for (float& v : x) v = normal(rng);
        for (int64_t r = 0; r < rows; ++r) x[static_cast<size_t>(r * kCols + 3)] = static_cast<float>(r % 5);
        for (float& v : y) v = normal(rng);
        monitor->offer(DType::kFP32, x.data(), kCols, DType::kFP32, y.data(), 1, rows);
        offered += rows;
      }
    });
  }
  std::atomic<bool> done{false};
  threads.emplace_back([&] {  // a reader, as the server's report and scrape are
    while (!done) {
      for (const auto& w : monitor->windows(true)) (void)w.inputs.serialize();
      (void)monitor->stats();
      monitor->close_window();
    }
  });
  for (int w = 0; w < kWriters; ++w) threads[static_cast<size_t>(w)].join();
  monitor->flush();
  done = true;
  threads.back().join();

  const auto stats = monitor->stats();
  check(static_cast<int64_t>(stats.rows_seen + stats.rows_skipped) == offered.load(), "every row seen or skipped");
  check(stats.rows_rejected == 0, "no row rejected");
  uint64_t in_windows = 0;
  TensorAccumulator merged(inputs);
  for (const auto& w : monitor->windows(true)) {
    in_windows += w.inputs.rows();
    check(w.inputs.rows() <= static_cast<uint64_t>(config.window_rows), "a window holds at most window_rows");
    check(w.outputs && w.outputs->rows() == w.inputs.rows(), "outputs follow inputs");
    const std::vector<uint8_t> bytes = w.inputs.serialize();
    merged.merge(TensorAccumulator::deserialize(bytes.data(), bytes.size()));
  }
  check(in_windows == stats.rows_seen, "windows add up to the rows seen");
  check(merged.rows() == stats.rows_seen, "merged rows");
  uint64_t binned = 0;
  for (uint64_t c : merged.histogram(0).counts()) binned += c;
  check(binned + merged.histogram(0).missing() == merged.rows(), "every row in a bin or missing");
  monitor->stop();
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
