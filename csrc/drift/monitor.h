// The drift monitor of one model version: each batch's monitored input (and output) goes
// through a bounded hand-off to the monitor's own thread, which updates the current window's
// accumulators. Windows are tumbling, closed by row count (exactly: a batch that crosses the
// boundary is split) or by time, whichever comes first; the last `history` closed windows are
// kept.
//
// Serving never waits for the monitor: when the hand-off holds `queue_rows` rows already, a
// batch is skipped and counted (so a report says how much of the traffic it saw).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "batch_observer.h"
#include "drift/accumulator.h"

namespace loopserve::drift {

struct MonitorConfig {
  int64_t window_rows = 10000;
  double window_seconds = 60.0;   // 0: windows close by row count only
  size_t history = 20;             // closed windows kept
  int64_t queue_rows = 1 << 16;    // hand-off capacity
  int input_index = 0;             // which of the model's inputs is monitored
  int output_index = -1;           // which output (prediction drift); -1: none
  size_t exact_windows = 2;        // the newest closed windows that keep their values exactly
};

struct Window {
  double start_unix = 0.0;  // wall-clock seconds
  double end_unix = 0.0;    // for the open window: now
  bool closed = false;
  TensorAccumulator inputs;
  std::optional<TensorAccumulator> outputs;
};

struct MonitorStats {
  uint64_t rows_seen = 0;       // rows accumulated
  uint64_t rows_skipped = 0;    // rows of batches dropped because the hand-off was full
  uint64_t batches_skipped = 0;
  uint64_t rows_rejected = 0;   // rows of batches the accumulator refused (shape or dtype)
  uint64_t windows_closed = 0;
  int64_t queued_rows = 0;
};

// Thread-safety: observe() may be called from any number of threads at once; windows(),
// stats(), flush() and close_window() from any thread. One internal thread updates the
// accumulators.
class DriftMonitor final : public BatchObserver {
 public:
  DriftMonitor(MonitorConfig config, std::shared_ptr<const AccumulatorSpec> inputs,
               std::shared_ptr<const AccumulatorSpec> outputs);
  ~DriftMonitor() override;
  DriftMonitor(const DriftMonitor&) = delete;
  DriftMonitor& operator=(const DriftMonitor&) = delete;

  void observe(const Batch& batch, const BatchResult& result) noexcept override;

  // Adds rows directly (tests, and data that does not come through a batcher).
  void offer(DType in_dtype, const void* in, int64_t in_cols, DType out_dtype, const void* out, int64_t out_cols,
             int64_t rows);

  // Closed windows, oldest first, then the open one (if it has rows or include_empty); with
  // last > 0 only the newest `last` of them (a poller should not copy a long history each time).
  std::vector<Window> windows(bool include_open = true, size_t last = 0) const;
  MonitorStats stats() const;
  void flush();         // returns once everything handed off so far is accumulated
  void close_window();  // closes the open window now (if it has rows)
  void stop();          // accumulates what is queued and joins the thread
  // Adds a window accumulated elsewhere (the GPU path) as the newest closed one; its rows count
  // as seen.
  void push_closed(Window window);
  const MonitorConfig& config() const { return config_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Item {
    DType in_dtype, out_dtype;
    int64_t rows, in_cols, out_cols;
    std::vector<std::byte> in, out;
  };

  void run();
  void accumulate(const Item& item);
  void rotate_locked();
  void trim_history_locked();  // after a window joins closed_: history and exact values
  Window fresh_window() const;

  const MonitorConfig config_;
  const std::shared_ptr<const AccumulatorSpec> input_spec_, output_spec_;

  mutable std::mutex queue_mu_;  // guards the hand-off and the counters next to it
  std::condition_variable queue_cv_, drained_cv_;
  std::deque<Item> queue_;
  int64_t queued_rows_ = 0;
  bool busy_ = false;  // the thread holds an item it took
  bool stopping_ = false;
  bool finished_ = false;  // the thread has returned
  uint64_t rows_skipped_ = 0, batches_skipped_ = 0;

  mutable std::mutex windows_mu_;  // guards the windows and the counters next to them
  Window open_;
  Clock::time_point open_since_;
  std::deque<Window> closed_;
  uint64_t rows_seen_ = 0, rows_rejected_ = 0, windows_closed_ = 0;

  std::thread thread_;
};

}  // namespace loopserve::drift
