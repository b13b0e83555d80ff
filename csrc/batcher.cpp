#include "batcher.h"

#include "bytes_tensor.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace loopserve {

namespace {

// Waits that gained no request, in a row, before the adaptive delay stops waiting.
constexpr int kUselessWaitsBeforeEager = 2;
// Deferred batches of one, in a row, before deferring stops; and how often it looks again.
constexpr int kLoneDeferredRunsBeforeNow = 8;
constexpr uint64_t kProbeEvery = 64;
// How long workers leave a deferred request to the thread that deferred it.
constexpr auto kDeferredGrace = std::chrono::milliseconds(2);

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

// `shape` (from `offset` on) against declared dims, where -1 matches anything.
bool dims_match(const std::vector<int64_t>& shape, size_t offset, const std::vector<int64_t>& dims) {
  if (shape.size() != dims.size() + offset) return false;
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] != -1 && dims[i] != shape[i + offset]) return false;
  return true;
}

size_t nbytes_of(DType dtype, const std::vector<int64_t>& shape) {
  return static_cast<size_t>(element_count(shape)) * dtype_size(dtype);
}

uint64_t ns_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
}

}  // namespace

void BatcherConfig::validate() const {
  auto bad = [this](const std::string& what) {
    throw std::invalid_argument("model '" + model_name + "': " + what);
  };
  if (inputs.empty()) bad("declares no inputs");
  if (outputs.empty()) bad("declares no outputs");
  if (max_batch_size < 0) bad("max_batch_size must be >= 0");
  for (int64_t p : preferred_batch_sizes)
    if (p < 1 || p > max_batch_size)
      bad("preferred_batch_sizes entry " + std::to_string(p) + " must be in [1, max_batch_size=" +
          std::to_string(max_batch_size) + "]");
  if (max_queue_delay_us < 0) bad("max_queue_delay_us must be >= 0");
  if (queue_capacity < 1) bad("queue_capacity must be >= 1");
  if (max_queue_wait_us < 0) bad("max_queue_wait_us must be >= 0");
  if (default_timeout_us < 0) bad("default_timeout_us must be >= 0");
  if (priority_levels < 1) bad("priority_levels must be >= 1");
  if (default_priority_level < 1 || default_priority_level > priority_levels)
    bad("default_priority_level must be in [1, priority_levels=" + std::to_string(priority_levels) + "]");
  if (instances < 1) bad("instances must be >= 1");
  if (inline_budget_us < 0) bad("inline_budget_us must be >= 0");
  for (const auto* specs : {&inputs, &outputs})
    for (const TensorSpec& t : *specs)
      for (int64_t d : t.dims)
        if (d < -1 || d == 0) bad("tensor '" + t.name + "' has dims " + shape_str(t.dims) +
                                  "; each must be a positive size or -1");
}

Batcher::Batcher(BatcherConfig config, std::shared_ptr<Executor> executor)
    : config_(std::move(config)), executor_(std::move(executor)) {
  config_.validate();
  for (const TensorSpec& t : config_.inputs)
    if (std::find(t.dims.begin(), t.dims.end(), -1) != t.dims.end()) fixed_row_shapes_ = false;
  levels_.resize(static_cast<size_t>(config_.priority_levels));
  stats_.by_batch_size.resize(static_cast<size_t>(std::max<int64_t>(config_.max_batch_size, 1)) + 1);
  workers_.reserve(static_cast<size_t>(config_.instances));
  try {
    for (int i = 0; i < config_.instances; ++i) workers_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    // Out of threads (or memory for their stacks): the ones started are joined here, since
    // a joinable std::thread destroyed during unwinding would terminate the process.
    stop();
    throw std::runtime_error("could not start the worker threads of " + std::to_string(config_.instances) +
                             " instances of model '" + config_.model_name + "' (" + std::to_string(workers_.size()) +
                             " started): " + e.what());
  }
}

Batcher::~Batcher() { stop(); }

void Batcher::validate(std::vector<InputView>& inputs, int64_t* rows) const {
  const auto model = [this] { return "model '" + config_.model_name + "'"; };  // built only to refuse
  if (inputs.size() != config_.inputs.size())
    throw InvalidInput(model() + " takes " + std::to_string(config_.inputs.size()) + " inputs, got " +
                       std::to_string(inputs.size()));
  const bool batching = config_.max_batch_size > 0;
  *rows = 1;
  for (size_t i = 0; i < inputs.size(); ++i) {
    InputView& in = inputs[i];
    const TensorSpec& spec = config_.inputs[i];
    if (in.dtype != spec.dtype)
      throw InvalidInput("input '" + spec.name + "' has datatype " + std::string(dtype_name(in.dtype)) +
                         ", but " + model() + " expects " + std::string(dtype_name(spec.dtype)));
    if (!dims_match(in.shape, batching ? 1 : 0, spec.dims)) {
      std::vector<int64_t> expected = spec.dims;
      if (batching) expected.insert(expected.begin(), -1);
      throw InvalidInput("input '" + spec.name + "' has shape " + shape_str(in.shape) + ", but " + model() +
                         " expects " + shape_str(expected) +
                         (batching ? " (batch dimension first; -1 is any size)" : " (-1 is any size)"));
    }
    for (int64_t d : in.shape)
      if (d < 0) throw InvalidInput("input '" + spec.name + "' has a negative dimension");
    if (in.dtype == DType::kBytes) {
      if ((in.data == nullptr && in.nbytes > 0) ||
          count_bytes_elements(in.data, in.nbytes) != element_count(in.shape))
        throw InvalidInput("input '" + spec.name + "' has BYTES data that does not hold the " +
                           std::to_string(element_count(in.shape)) + " elements of shape " + shape_str(in.shape));
    } else {
      size_t needed = 0;
      if (!checked_nbytes(in.dtype, in.shape, &needed))
        throw InvalidInput("input '" + spec.name + "' has shape " + shape_str(in.shape) + ", too large to hold");
      if (in.nbytes != needed)
        throw InvalidInput("input '" + spec.name + "' has " + std::to_string(in.nbytes) + " bytes of data, but its shape " +
                           shape_str(in.shape) + " of " + std::string(dtype_name(in.dtype)) + " needs " +
                           std::to_string(needed));
      if (in.data == nullptr && in.nbytes > 0) throw InvalidInput("input '" + spec.name + "' has no data");
    }
    if (!batching) continue;
    const int64_t r = in.shape[0];
    if (i == 0) {
      *rows = r;
    } else if (r != *rows) {
      throw InvalidInput("input '" + spec.name + "' has " + std::to_string(r) + " rows but input '" +
                         config_.inputs[0].name + "' has " + std::to_string(*rows) +
                         "; all inputs of a request need the same batch dimension");
    }
  }
  if (batching && *rows < 1)
    throw InvalidInput("request has 0 rows; the batch dimension must be at least 1");
  if (batching && *rows > config_.max_batch_size)
    throw InvalidInput("request has " + std::to_string(*rows) + " rows, more than the max_batch_size " +
                       std::to_string(config_.max_batch_size) + " of " + model());
}

Batcher::Submitted Batcher::submit(std::vector<InputView> inputs, uint64_t token,
                                   std::shared_ptr<CompletionSink> sink, int priority, int64_t timeout_us,
                                   Inline mode) {
  int64_t rows;
  validate(inputs, &rows);
  if (priority == 0) priority = config_.default_priority_level;
  if (priority < 1 || priority > config_.priority_levels)
    throw InvalidInput("priority " + std::to_string(priority) + " is outside [1, " +
                       std::to_string(config_.priority_levels) + "] of model '" + config_.model_name + "'");
  if (timeout_us < 0) timeout_us = config_.default_timeout_us;

  Request r;
  r.token = token;
  r.sink = std::move(sink);
  r.inputs = std::move(inputs);
  r.rows = rows;
  r.enqueued = Clock::now();
  // A timeout past what the clock can hold (a client may send up to 2^63 - 1 µs) is no deadline:
  // the sum would overflow the clock's nanoseconds into the past.
  const auto room = std::chrono::duration_cast<std::chrono::microseconds>(Clock::time_point::max() - r.enqueued);
  r.deadline = timeout_us > 0 && timeout_us < room.count() ? r.enqueued + std::chrono::microseconds(timeout_us)
                                                           : Clock::time_point::max();
  Submitted result = Submitted::kQueued;
  bool notify = false;
  std::vector<Request> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) throw Unavailable("model '" + config_.model_name + "' is unloading");
    // Answer timed-out requests now, even while every worker is busy with a long batch.
    if (r.enqueued >= earliest_deadline_) expire(r.enqueued, expired);
    if (queued_ >= config_.queue_capacity) {
      std::lock_guard<std::mutex> stats_lock(stats_mu_);
      ++stats_.rejected;
      throw QueueFull("the queue of model '" + config_.model_name + "' is full (" +
                      std::to_string(config_.queue_capacity) + " requests); retry later");
    }
    if (config_.max_queue_wait_us > 0 && queued_ > 0) {
      // The batches ahead of this request, shared by the instances, each about as long as
      // the recent ones.
      const int64_t batch_ns = batch_compute_avg_ns_.load(std::memory_order_relaxed);
      const int64_t per_batch = std::max<int64_t>(1, config_.max_batch_size);
      const int64_t batches_ahead = (queued_rows_ + per_batch - 1) / per_batch;
      const int64_t wait_us = batch_ns < 0 ? 0 : batches_ahead * batch_ns / config_.instances / 1000;
      if (wait_us > config_.max_queue_wait_us) {
        std::lock_guard<std::mutex> stats_lock(stats_mu_);
        ++stats_.rejected;
        throw QueueFull("model '" + config_.model_name + "' is at capacity: about " + std::to_string(wait_us / 1000) +
                        " ms of work is queued ahead (limit " + std::to_string(config_.max_queue_wait_us / 1000) +
                        " ms, dynamic_batching.max_queue_wait_us); retry later");
      }
    }
    // Requests overlap: whatever the adaptive delay learned about lone requests is stale.
    if (queued_ > 0 || busy_ > 0) useless_waits_ = lone_deferred_runs_ = 0;
    if (mode == Inline::kDeferred && inline_allowed()) {
      const bool lone = lone_deferred_runs_ >= kLoneDeferredRunsBeforeNow && queued_ == 0;
      result = lone && ++deferred_submits_ % kProbeEvery != 0 ? Submitted::kRan : Submitted::kDeferred;
    } else if (mode == Inline::kNow && inline_allowed() && queued_ == 0 && eager()) {
      // Run at once only when truly alone: a thread cannot gather a batch of its own.
      result = Submitted::kRan;
    }
    if (result == Submitted::kRan) {
      ++busy_;
    } else {
      if (result == Submitted::kDeferred) r.workers_not_before = r.enqueued + kDeferredGrace;
      earliest_deadline_ = std::min(earliest_deadline_, r.deadline);
      levels_[static_cast<size_t>(priority - 1)].push_back(std::move(r));
      ++queued_;
      queued_rows_ += r.rows;
    }
    // A deferred request wakes a worker too (once per burst) as a safety net; the worker
    // leaves it alone for kDeferredGrace.
    notify = result == Submitted::kQueued || (result == Submitted::kDeferred && queued_ == 1);
  }
  if (notify) cv_.notify_one();
  if (!expired.empty()) fail_expired(expired);
  if (result == Submitted::kRan) {
    std::vector<Request> batch;
    batch.push_back(std::move(r));
    std::vector<Buffer> staging(config_.inputs.size());  // unused: one request is gathered in place
    run_batch(-1, batch, staging);
  }
  return result;
}

void Batcher::run_deferred() {
  std::vector<Buffer> staging(config_.inputs.size());
  std::vector<Request> batch;
  // What is queued now, in as many batches as it takes; later arrivals are someone else's.
  for (int64_t left = -1; left != 0;) {
    batch.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      const bool first = left < 0;
      if (first) left = queued_;
      if (queued_ == 0) return;
      Plan plan = plan_batch(Clock::now());
      plan.count = std::max<size_t>(plan.count, 1);  // run what is there, waiting for nothing
      take(plan, batch);
      ++busy_;
      if (first) lone_deferred_runs_ = left == 1 ? lone_deferred_runs_ + 1 : 0;
    }
    left = std::max<int64_t>(left - static_cast<int64_t>(batch.size()), 0);
    run_batch(-1, batch, staging);
  }
}

bool Batcher::eager() const {
  return config_.max_queue_delay_us == 0 ||
         (config_.adaptive_queue_delay && useless_waits_ >= kUselessWaitsBeforeEager);
}

// Whether a request may run on the submitting thread: the model has been quick, and no
// worker is running a batch (their batches go first; and a busy model is not quick now).
bool Batcher::inline_allowed() const {
  if (!config_.adaptive_queue_delay || config_.inline_budget_us == 0 || busy_ > 0 || stopping_) return false;
  const int64_t ns = std::min(batch_compute_avg_ns_.load(std::memory_order_relaxed),
                              batch_compute_last_ns_.load(std::memory_order_relaxed));
  return ns >= 0 && ns <= config_.inline_budget_us * 1000;
}

void Batcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  {
    std::lock_guard<std::mutex> lock(join_mu_);
    for (std::thread& t : workers_)
      if (t.joinable()) t.join();
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return busy_ == 0; });  // batches run by submitters (inline)
}

std::shared_ptr<Executor> Batcher::release_executor() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stopping_ || busy_ > 0 || queued_ > 0)
    throw std::logic_error("release_executor() before stop() of model '" + config_.model_name + "'");
  return std::move(executor_);
}

bool Batcher::full_batch_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_.max_batch_size > 0 ? queued_rows_ >= config_.max_batch_size : queued_ > 0;
}

BatcherStats Batcher::stats() const {
  int64_t queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued = queued_;
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  BatcherStats s = stats_;
  s.queued = queued;
  return s;
}

void Batcher::worker(int instance) {
  std::vector<Buffer> staging(config_.inputs.size());
  std::vector<Request> batch;
  std::vector<Request> expired;
  Clock::time_point free_since = Clock::time_point::min();
  for (;;) {
    batch.clear();
    expired.clear();
    bool more;
    {
      std::unique_lock<std::mutex> lock(mu_);
      more = next_batch(lock, free_since, batch, expired);
      if (!batch.empty()) ++busy_;
    }
    if (!expired.empty()) fail_expired(expired);
    if (!batch.empty()) {
      run_batch(instance, batch, staging);
      free_since = Clock::now();
    }
    if (!more) return;
  }
}

// Waits until there is a batch to run or timed-out requests to answer. Returns false when
// the batcher is stopping and the queue is empty: the worker should exit.
bool Batcher::next_batch(std::unique_lock<std::mutex>& lock, Clock::time_point free_since,
                         std::vector<Request>& batch, std::vector<Request>& expired) {
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (now >= earliest_deadline_) expire(now, expired);
    if (!expired.empty()) return true;
    if (queued_ == 0) {
      if (stopping_) return false;
      cv_.wait(lock);
      continue;
    }
    const Plan plan = plan_batch(now, free_since, /*by_worker=*/true);
    if (plan.ready) {
      if (plan.by_delay && plan.count == 1 && queued_ == 1) {
        ++useless_waits_;  // a lone request waited out the delay and nothing came
      } else if (plan.count > 1) {
        useless_waits_ = 0;
      }
      if (plan.by_delay) {
        std::lock_guard<std::mutex> stats_lock(stats_mu_);
        ++stats_.delayed_batches;
      }
      take(plan, batch);
      if (queued_ > 0) cv_.notify_one();  // another idle worker may batch the rest
      return true;
    }
    cv_.wait_until(lock, std::min(plan.wake_at, earliest_deadline_));
  }
}

bool Batcher::compatible(const Request& a, const Request& b) const {
  if (fixed_row_shapes_) return true;
  for (size_t i = 0; i < a.inputs.size(); ++i)
    if (!std::equal(a.inputs[i].shape.begin() + 1, a.inputs[i].shape.end(), b.inputs[i].shape.begin() + 1,
                    b.inputs[i].shape.end()))
      return false;
  return true;
}

// Triton's dynamic batching rules, over the queue in priority then arrival order, taking
// only requests whose non-batch dimensions agree with the first: dispatch at once when the
// batch is full (max_batch_size, or the next request would not fit) or reaches a preferred
// size; otherwise wait for more until the oldest request has waited max_queue_delay_us.
// With adaptive_queue_delay, that wait is skipped while it keeps gaining nothing.
//
// The delay runs from when this worker became free, if that is later than the oldest
// request: time spent queued behind a busy model is not time spent gathering a batch.
// Otherwise clients that resubmit as their batch completes split into two groups that
// never rejoin (one group's partial batch always runs while the other's is in flight).
Batcher::Plan Batcher::plan_batch(Clock::time_point now, Clock::time_point free_since, bool by_worker) const {
  Plan plan;
  const Request* head = nullptr;
  for (const auto& level : levels_)
    if (!level.empty()) {
      head = &level.front();
      break;
    }
  if (by_worker && !stopping_ && now < head->workers_not_before) {
    plan.wake_at = head->workers_not_before;  // its submitter runs it, unless it never does
    return plan;
  }
  if (config_.max_batch_size == 0) {
    plan.ready = true;
    plan.count = 1;
    return plan;
  }
  int64_t rows = 0;
  size_t count = 0, preferred_count = 0;
  bool full = false;
  Clock::time_point oldest = head->enqueued;
  for (const auto& level : levels_) {
    for (const Request& r : level) {
      if (!compatible(*head, r)) continue;
      if (rows + r.rows > config_.max_batch_size) {
        full = true;
        break;
      }
      rows += r.rows;
      ++count;
      oldest = std::min(oldest, r.enqueued);
      const auto& pref = config_.preferred_batch_sizes;
      if (std::find(pref.begin(), pref.end(), rows) != pref.end()) preferred_count = count;
    }
    if (full) break;
  }
  full = full || rows == config_.max_batch_size;
  const Clock::time_point due = std::max(oldest, free_since) + std::chrono::microseconds(config_.max_queue_delay_us);
  plan.count = count;
  if (full || stopping_ || config_.max_queue_delay_us == 0) {
    plan.ready = true;
  } else if (preferred_count > 0) {
    plan.ready = true;
    plan.count = preferred_count;
  } else if (eager()) {  // before the delay test: a batch that never waited is not one "by delay"
    plan.ready = true;
  } else if (now >= due) {
    plan.ready = true;
    plan.by_delay = true;
  } else {
    plan.wake_at = due;
  }
  return plan;
}

// Takes the requests plan_batch chose: the first `count` in its walk order that are
// compatible with the first.
void Batcher::take(const Plan& plan, std::vector<Request>& batch) {
  for (auto& level : levels_) {
    for (auto it = level.begin(); it != level.end() && batch.size() < plan.count;) {
      if (batch.empty() || compatible(batch.front(), *it)) {
        queued_rows_ -= it->rows;
        batch.push_back(std::move(*it));
        it = level.erase(it);
      } else {
        ++it;
      }
    }
  }
  queued_ -= static_cast<int64_t>(batch.size());
}

void Batcher::expire(Clock::time_point now, std::vector<Request>& expired) {
  Clock::time_point earliest = Clock::time_point::max();
  for (auto& level : levels_) {
    for (auto it = level.begin(); it != level.end();) {
      if (it->deadline <= now) {
        queued_rows_ -= it->rows;
        expired.push_back(std::move(*it));
        it = level.erase(it);
      } else {
        earliest = std::min(earliest, it->deadline);
        ++it;
      }
    }
  }
  earliest_deadline_ = earliest;
  queued_ -= static_cast<int64_t>(expired.size());
}

void Batcher::fail_expired(std::vector<Request>& expired) {
  const Clock::time_point now = Clock::now();
  std::vector<std::pair<CompletionSink*, std::vector<Completion>>> groups;
  for (Request& r : expired) {
    const auto waited_us = std::chrono::duration_cast<std::chrono::microseconds>(now - r.enqueued).count();
    const auto limit_us = std::chrono::duration_cast<std::chrono::microseconds>(r.deadline - r.enqueued).count();
    Completion c;
    c.token = r.token;
    c.status = Status::kTimedOut;
    c.error = std::make_shared<const std::string>(
        "request timed out after " + std::to_string(waited_us) + " us in the queue of model '" +
        config_.model_name + "' (its timeout is " + std::to_string(limit_us) + " us); it was not run");
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& p) { return p.first == r.sink.get(); });
    if (g == groups.end()) g = groups.insert(groups.end(), {r.sink.get(), {}});
    g->second.push_back(std::move(c));
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.timed_out += expired.size();
  }
  for (auto& [sink, items] : groups) sink->deliver(std::move(items));
}

void Batcher::check_outputs(const Batch& batch, const BatchResult& result) const {
  const std::string model = "model '" + config_.model_name + "'";
  if (result.outputs.size() != config_.outputs.size())
    throw ModelError(model + " returned " + std::to_string(result.outputs.size()) + " outputs; its config declares " +
                     std::to_string(config_.outputs.size()));
  const bool batching = config_.max_batch_size > 0;
  for (size_t i = 0; i < result.outputs.size(); ++i) {
    const OutputTensor& out = result.outputs[i];
    const TensorSpec& spec = config_.outputs[i];
    if (out.dtype != spec.dtype)
      throw ModelError(model + " returned output '" + spec.name + "' as " + std::string(dtype_name(out.dtype)) +
                       "; its config declares " + std::string(dtype_name(spec.dtype)));
    std::vector<int64_t> expected = spec.dims;
    if (batching) expected.insert(expected.begin(), batch.rows);
    if (!dims_match(out.shape, 0, expected))
      throw ModelError(model + " returned output '" + spec.name + "' with shape " + shape_str(out.shape) +
                       " for a batch of " + std::to_string(batch.rows) + " rows; its config declares " +
                       shape_str(expected) + (batching ? " (batch dimension first)" : ""));
    if (out.dtype == DType::kBytes) {
      if (count_bytes_elements(out.data.data(), out.data.size()) != element_count(out.shape))
        throw ModelError(model + " returned BYTES output '" + spec.name + "' whose data does not hold the " +
                         std::to_string(element_count(out.shape)) + " elements of its shape " + shape_str(out.shape));
    } else if (out.data.size() != nbytes_of(out.dtype, out.shape))
      throw ModelError(model + " returned output '" + spec.name + "' with " + std::to_string(out.data.size()) +
                       " bytes for shape " + shape_str(out.shape));
  }
}

void Batcher::set_observer(std::shared_ptr<BatchObserver> observer) { std::atomic_store(&observer_, std::move(observer)); }

void Batcher::run_batch(int instance, std::vector<Request>& batch, std::vector<Buffer>& staging) {
  const Clock::time_point start = Clock::now();
  const bool batching = config_.max_batch_size > 0;
  Batch b;
  b.instance = instance;
  b.rows = 0;
  for (const Request& r : batch) b.rows += r.rows;
  b.inputs.resize(config_.inputs.size());
  for (size_t i = 0; i < config_.inputs.size(); ++i) {
    BatchInput& in = b.inputs[i];
    const InputView& first = batch.front().inputs[i];
    in.dtype = first.dtype;
    in.shape = first.shape;
    if (batching) in.shape[0] = b.rows;
    in.nbytes = 0;
    for (const Request& r : batch) in.nbytes += r.inputs[i].nbytes;
    std::byte* dst = executor_->staging(instance, i, in.nbytes);
    if (dst == nullptr && batch.size() == 1) {
      in.data = first.data;  // one request: it is already contiguous
      continue;
    }
    if (dst == nullptr) {
      staging[i].reserve(in.nbytes);
      dst = staging[i].data();
    }
    in.data = dst;
    for (const Request& r : batch) {
      const size_t n = r.inputs[i].nbytes;
      if (n > 0) std::memcpy(dst, r.inputs[i].data, n);
      dst += n;
    }
  }

  const Clock::time_point gathered = Clock::now();
  auto result = std::make_shared<BatchResult>();
  std::shared_ptr<const std::string> error;
  try {
    executor_->run(b, *result);
    check_outputs(b, *result);
  } catch (const std::exception& e) {
    error = std::make_shared<const std::string>(e.what());
  } catch (...) {
    error = std::make_shared<const std::string>("model '" + config_.model_name + "' failed with an unknown error");
  }
  const Clock::time_point ran = Clock::now();
  if (!error) {
    const auto took = static_cast<int64_t>(ns_between(gathered, ran));
    const int64_t avg = batch_compute_avg_ns_.load(std::memory_order_relaxed);
    batch_compute_avg_ns_.store(avg < 0 ? took : (avg * 7 + took) / 8, std::memory_order_relaxed);
    batch_compute_last_ns_.store(took, std::memory_order_relaxed);
    // Outside the model's measured time, so monitoring does not change batching decisions.
    if (std::shared_ptr<BatchObserver> observer = std::atomic_load(&observer_)) observer->observe(b, *result);
  }

  std::vector<std::pair<CompletionSink*, std::vector<Completion>>> groups;
  uint64_t queue_ns = 0;
  int64_t row = 0;
  for (Request& r : batch) {
    queue_ns += ns_between(r.enqueued, start);
    Completion c;
    c.token = r.token;
    if (error) {
      c.status = Status::kModelError;
      c.error = error;
    } else {
      c.result = result;
      c.row_begin = row;
      c.rows = r.rows;
      c.whole = !batching;
    }
    row += r.rows;
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& p) { return p.first == r.sink.get(); });
    if (g == groups.end()) g = groups.insert(groups.end(), {r.sink.get(), {}});
    g->second.push_back(std::move(c));
  }
  const Clock::time_point scattered = Clock::now();

  {
    const uint64_t n = batch.size();
    const uint64_t input_ns = ns_between(start, gathered), infer_ns = ns_between(gathered, ran),
                   output_ns = ns_between(ran, scattered);
    std::lock_guard<std::mutex> lock(stats_mu_);
    BatcherStats& s = stats_;
    s.queue_ns += queue_ns;
    s.compute_input_ns += n * input_ns;
    s.compute_infer_ns += n * infer_ns;
    s.compute_output_ns += n * output_ns;
    if (instance < 0) s.inline_runs += n;
    const uint64_t compute_ns = n * ns_between(start, scattered);
    if (error) {
      s.failed += n;
      s.failed_ns += queue_ns + compute_ns;
    } else {
      s.success += n;
      s.success_ns += queue_ns + compute_ns;
      s.inference_count += static_cast<uint64_t>(b.rows);
      s.execution_count += 1;
      s.last_inference_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      std::chrono::system_clock::now().time_since_epoch())
                                                      .count());
      BatchSizeStats& bs = s.by_batch_size[static_cast<size_t>(batching ? b.rows : 1)];
      bs.count += 1;
      bs.compute_input_ns += input_ns;
      bs.compute_infer_ns += infer_ns;
      bs.compute_output_ns += output_ns;
    }
  }
  {
    // Not busy any more before anyone hears back: a client that answers with its next
    // request must not look like an overlapping one to the adaptive delay.
    std::lock_guard<std::mutex> lock(mu_);
    if (--busy_ == 0 && stopping_) cv_.notify_all();  // stop() may be waiting for this
  }
  for (auto& [sink, items] : groups) sink->deliver(std::move(items));
}

}  // namespace loopserve
