#include "drift/monitor.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace loopserve::drift {

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Columns of a [rows, ...] tensor viewed as [rows, cols].
int64_t columns_of(const std::vector<int64_t>& shape) {
  int64_t cols = 1;
  for (size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
  return cols;
}

}  // namespace

DriftMonitor::DriftMonitor(MonitorConfig config, std::shared_ptr<const AccumulatorSpec> inputs,
                           std::shared_ptr<const AccumulatorSpec> outputs)
    : config_(config), input_spec_(std::move(inputs)), output_spec_(std::move(outputs)), open_(fresh_window()) {
  if (config_.window_rows <= 0) throw std::invalid_argument("drift monitor: window_rows must be positive");
  if (!(config_.window_seconds >= 0 && config_.window_seconds <= 1e9))
    throw std::invalid_argument("drift monitor: window_seconds must be between 0 and 1e9");
  if (config_.queue_rows <= 0) throw std::invalid_argument("drift monitor: queue_rows must be positive");
  open_since_ = Clock::now();
  thread_ = std::thread([this] { run(); });
}

DriftMonitor::~DriftMonitor() { stop(); }

Window DriftMonitor::fresh_window() const {
  Window w{unix_now(), 0.0, false, TensorAccumulator(input_spec_), std::nullopt};
  if (output_spec_) w.outputs.emplace(output_spec_);
  return w;
}

void DriftMonitor::observe(const Batch& batch, const BatchResult& result) noexcept {
  const auto in_index = static_cast<size_t>(config_.input_index);
  if (in_index >= batch.inputs.size()) return;
  const BatchInput& in = batch.inputs[in_index];
  const int64_t rows = in.shape.empty() ? 1 : in.shape[0];
  const OutputTensor* out = nullptr;
  if (output_spec_ && config_.output_index >= 0 && static_cast<size_t>(config_.output_index) < result.outputs.size())
    out = &result.outputs[static_cast<size_t>(config_.output_index)];
  // Outputs without a batch dimension of the same rows (a model that does not batch) are not
  // rows to monitor: leave them out rather than read past them.
  if (out && (out->shape.empty() || out->shape[0] != rows ||
              out->data.size() < static_cast<size_t>(rows * columns_of(out->shape)) * dtype_size(out->dtype)))
    out = nullptr;
  try {
    offer(in.dtype, in.data, columns_of(in.shape), out ? out->dtype : DType::kFP32, out ? out->data.data() : nullptr,
          out ? columns_of(out->shape) : 0, rows);
  } catch (...) {
    // Out of memory copying a batch: the monitor misses it, serving goes on.
    std::lock_guard<std::mutex> lock(queue_mu_);
    rows_skipped_ += static_cast<uint64_t>(rows);
    ++batches_skipped_;
  }
}

void DriftMonitor::offer(DType in_dtype, const void* in, int64_t in_cols, DType out_dtype, const void* out,
                         int64_t out_cols, int64_t rows) {
  if (rows <= 0) return;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (stopping_ || queued_rows_ + rows > config_.queue_rows) {
      rows_skipped_ += static_cast<uint64_t>(rows);
      ++batches_skipped_;
      return;
    }
    queued_rows_ += rows;  // reserved before copying, so concurrent offers respect the bound
  }
  Item item{in_dtype, out_dtype, rows, in_cols, out ? out_cols : 0, {}, {}};
  try {
    const size_t in_bytes = static_cast<size_t>(rows * in_cols) * dtype_size(in_dtype);
    item.in.resize(in_bytes);
    if (in_bytes) std::memcpy(item.in.data(), in, in_bytes);
    if (out) {
      const size_t out_bytes = static_cast<size_t>(rows * out_cols) * dtype_size(out_dtype);
      item.out.resize(out_bytes);
      if (out_bytes) std::memcpy(item.out.data(), out, out_bytes);
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queued_rows_ -= rows;
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.push_back(std::move(item));
  }
  queue_cv_.notify_one();
}

void DriftMonitor::run() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  for (;;) {
    if (queue_.empty()) {
      if (stopping_) {
        finished_ = true;
        drained_cv_.notify_all();
        return;
      }
      if (config_.window_seconds > 0) {
        // Wake when the open window's time is up, to close it even without traffic.
        Clock::time_point due;
        {
          std::lock_guard<std::mutex> w(windows_mu_);
          due = open_since_ + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(config_.window_seconds));
        }
        queue_cv_.wait_until(lock, due);
      } else {
        queue_cv_.wait(lock);
      }
      if (queue_.empty()) {
        lock.unlock();
        {
          std::lock_guard<std::mutex> w(windows_mu_);
          if (config_.window_seconds > 0 && Clock::now() - open_since_ >= std::chrono::duration<double>(config_.window_seconds))
            rotate_locked();
        }
        lock.lock();
        continue;
      }
    }
    Item item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    accumulate(item);
    lock.lock();
    busy_ = false;
    queued_rows_ -= item.rows;
    if (queue_.empty()) drained_cv_.notify_all();
  }
}

namespace {

bool monitorable(DType dtype) {
  return dtype == DType::kFP32 || dtype == DType::kFP64 || dtype == DType::kInt32 || dtype == DType::kInt64;
}

}  // namespace

void DriftMonitor::accumulate(const Item& item) {
  std::lock_guard<std::mutex> lock(windows_mu_);
  // Checked before either accumulator is touched, so a bad batch is rejected whole.
  const bool outputs_ok = item.out.empty() || !output_spec_ ||
                          (monitorable(item.out_dtype) && item.out_cols >= output_spec_->min_columns());
  if (!monitorable(item.in_dtype) || item.in_cols < input_spec_->min_columns() || !outputs_ok) {
    rows_rejected_ += static_cast<uint64_t>(item.rows);
    return;
  }
  const size_t in_row = static_cast<size_t>(item.in_cols) * dtype_size(item.in_dtype);
  const size_t out_row = static_cast<size_t>(item.out_cols) * dtype_size(item.out_dtype);
  int64_t done = 0;
  try {
    while (done < item.rows) {
      if (config_.window_seconds > 0 && Clock::now() - open_since_ >= std::chrono::duration<double>(config_.window_seconds))
        rotate_locked();
      const int64_t room = config_.window_rows - static_cast<int64_t>(open_.inputs.rows());
      const int64_t take = std::min(room, item.rows - done);
      open_.inputs.update(item.in_dtype, item.in.data() + static_cast<size_t>(done) * in_row, take, item.in_cols);
      if (open_.outputs && !item.out.empty())
        open_.outputs->update(item.out_dtype, item.out.data() + static_cast<size_t>(done) * out_row, take,
                              item.out_cols);
      done += take;
      rows_seen_ += static_cast<uint64_t>(take);
      if (static_cast<int64_t>(open_.inputs.rows()) >= config_.window_rows) rotate_locked();
    }
  } catch (const std::invalid_argument&) {
    rows_rejected_ += static_cast<uint64_t>(item.rows - done);
  }
}

void DriftMonitor::rotate_locked() {
  if (open_.inputs.rows() == 0) {  // nothing to close: restart the clock
    open_since_ = Clock::now();
    open_.start_unix = unix_now();
    return;
  }
  open_.end_unix = unix_now();
  open_.closed = true;
  closed_.push_back(std::move(open_));
  trim_history_locked();
  open_ = fresh_window();
  open_since_ = Clock::now();
}

void DriftMonitor::trim_history_locked() {
  ++windows_closed_;
  while (closed_.size() > config_.history) closed_.pop_front();
  // Older windows give up their exact values (their statistics fall back to the KLL sample):
  // memory stays at (exact_windows + 1) windows' values, whatever the history.
  if (closed_.size() > config_.exact_windows) {
    Window& older = closed_[closed_.size() - 1 - config_.exact_windows];
    older.inputs.drop_exact_values();
    if (older.outputs) older.outputs->drop_exact_values();
  }
}

std::vector<Window> DriftMonitor::windows(bool include_open, size_t last) const {
  std::lock_guard<std::mutex> lock(windows_mu_);
  size_t closed = closed_.size();
  if (last > 0) closed = std::min(closed, include_open ? last - 1 : last);
  std::vector<Window> out(closed_.end() - static_cast<std::ptrdiff_t>(closed), closed_.end());
  if (include_open) {
    out.push_back(open_);
    out.back().end_unix = unix_now();
  }
  return out;
}

void DriftMonitor::push_closed(Window window) {
  std::lock_guard<std::mutex> lock(windows_mu_);
  window.closed = true;
  rows_seen_ += window.inputs.rows();
  closed_.push_back(std::move(window));
  trim_history_locked();
}

MonitorStats DriftMonitor::stats() const {
  MonitorStats s;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    s.rows_skipped = rows_skipped_;
    s.batches_skipped = batches_skipped_;
    s.queued_rows = queued_rows_;
  }
  std::lock_guard<std::mutex> lock(windows_mu_);
  s.rows_seen = rows_seen_;
  s.rows_rejected = rows_rejected_;
  s.windows_closed = windows_closed_;
  return s;
}

void DriftMonitor::flush() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  drained_cv_.wait(lock, [&] { return (queue_.empty() && !busy_) || finished_; });
}

void DriftMonitor::close_window() {
  std::lock_guard<std::mutex> lock(windows_mu_);
  rotate_locked();
}

void DriftMonitor::stop() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace loopserve::drift
