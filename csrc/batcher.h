// The dynamic batcher: one per served model version. Requests wait in a bounded priority
// queue; worker threads (one per model instance) form batches under Triton's rules, gather
// the rows into one contiguous buffer, run the executor, and hand each request its rows.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "batch_observer.h"
#include "completion.h"
#include "executor.h"
#include "tensor.h"

namespace loopserve {

// Refusals at submit time; the request was not queued.
class InvalidInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class Unavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct BatcherConfig {
  std::string model_name;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  // 0: the model takes no batch dimension and every request runs alone.
  int64_t max_batch_size = 0;
  // Batch sizes (in rows) dispatched as soon as the queue can fill them.
  std::vector<int64_t> preferred_batch_sizes;
  // How long the oldest queued request may wait for a batch to fill.
  int64_t max_queue_delay_us = 0;
  // Stop waiting while waits keep gaining nothing (a lone closed-loop client), and wait
  // again as soon as requests overlap. See Batcher::plan_batch.
  bool adaptive_queue_delay = true;
  // Queued requests at most; a full queue refuses at once.
  int64_t queue_capacity = 1024;
  // Past saturation, refuse at once (QueueFull) a request that would wait longer than this
  // behind the batches already queued (estimated from the recent batch time); 0: no limit.
  // Queueing past it only makes every answer later: a client told "retry" can go elsewhere.
  int64_t max_queue_wait_us = 0;
  // Per-request queue timeout when the request names none; 0 means none.
  int64_t default_timeout_us = 0;
  // Priority 1 is served first; a request that names no priority gets the default.
  int priority_levels = 2;
  int default_priority_level = 2;
  // Batches run at once, each by its own worker thread.
  int instances = 1;
  // With adaptive_queue_delay, a model whose recent batches took less than this runs its
  // batches on the submitting thread when no worker is busy, instead of handing them to a
  // worker: two thread hand-offs and a GIL switch cost more than such a model. 0: never.
  int64_t inline_budget_us = 100;

  void validate() const;  // throws std::invalid_argument naming the bad field
};

struct BatchSizeStats {
  uint64_t count = 0;  // batches of this size
  uint64_t compute_input_ns = 0;
  uint64_t compute_infer_ns = 0;
  uint64_t compute_output_ns = 0;
};

// Counters since start. Per-request times are summed over requests, each request charged
// its batch's compute time, as Triton's statistics extension counts them.
struct BatcherStats {
  uint64_t success = 0;
  uint64_t failed = 0;      // the model failed on the request's batch
  uint64_t timed_out = 0;   // waited past its timeout; never run
  uint64_t rejected = 0;    // refused at submit: the queue was full, or its wait over max_queue_wait_us
  uint64_t inference_count = 0;  // rows run
  uint64_t execution_count = 0;  // batches run
  uint64_t queue_ns = 0;
  uint64_t compute_input_ns = 0;
  uint64_t compute_infer_ns = 0;
  uint64_t compute_output_ns = 0;
  uint64_t success_ns = 0;  // queue + compute of the successful requests
  uint64_t failed_ns = 0;
  uint64_t inline_runs = 0;  // requests run on the submitting thread
  uint64_t delayed_batches = 0;  // batches that waited out max_queue_delay_us for more requests
  int64_t queued = 0;       // requests waiting now
  uint64_t last_inference_ms = 0;  // wall clock (ms since the Unix epoch) of the last batch run
  std::vector<BatchSizeStats> by_batch_size;  // index: rows in the batch
};

// Thread-safety: every public member may be called from any thread at any time.
class Batcher {
 public:
  Batcher(BatcherConfig config, std::shared_ptr<Executor> executor);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Validates and queues one request, whose inputs come in declared order. The completion
  // (exactly one, whatever happens) goes to `sink` tagged with `token`. priority: 0 for the
  // default level; timeout_us: -1 for the default, 0 for none. Throws InvalidInput,
  // QueueFull or Unavailable; then nothing was queued and no completion will come.
  //
  // A request to a quick model (see inline_budget_us) may run on the submitting thread:
  // with Inline::kNow at once; with Inline::kDeferred it is queued for the caller to run
  // with run_deferred() a moment later, together with whatever else came meanwhile (an
  // event loop submits its requests one by one: this lets a loop's burst form one batch).
  // When those deferred batches keep holding a single request, kDeferred runs at once too
  // (kRan), deferring one request in kProbeEvery to see whether others come again.
  enum class Inline { kNever, kNow, kDeferred };
  enum class Submitted { kQueued, kRan, kDeferred };
  Submitted submit(std::vector<InputView> inputs, uint64_t token, std::shared_ptr<CompletionSink> sink,
                   int priority = 0, int64_t timeout_us = -1, Inline mode = Inline::kNow);

  // Runs what is queued, in batches, on this thread; for callers that were told kDeferred.
  // Does nothing when a worker has taken it already.
  void run_deferred();

  // Refuses new requests, runs everything already queued, joins the workers, and waits for
  // batches running on submitting threads to finish.
  void stop();

  // After stop(): hands the executor back (the model's memory goes when its last owner lets
  // go). The caller destroys it; for a Python executor, with the GIL held.
  std::shared_ptr<Executor> release_executor();

  // Every batch that runs successfully from now on is shown to `observer` (nullptr: none).
  void set_observer(std::shared_ptr<BatchObserver> observer);

  BatcherStats stats() const;
  // Whether a whole batch (max_batch_size rows) waits now: the model is what requests wait
  // for, and its next batch could start at once.
  bool full_batch_waiting() const;
  const BatcherConfig& config() const noexcept { return config_; }

 private:
  using Clock = std::chrono::steady_clock;

  struct Request {
    uint64_t token = 0;
    std::shared_ptr<CompletionSink> sink;
    std::vector<InputView> inputs;
    int64_t rows = 1;
    Clock::time_point enqueued;
    Clock::time_point deadline;  // time_point::max() without a timeout
    // A deferred request is left to its submitter until then; a worker takes it after, in
    // case the submitter never runs it (an event loop closed before its next turn).
    Clock::time_point workers_not_before;
  };

  struct Plan {
    bool ready = false;
    bool by_delay = false;
    size_t count = 0;           // requests to take, in queue order among compatible ones
    Clock::time_point wake_at;  // when not ready: when to look again
  };

  void validate(std::vector<InputView>& inputs, int64_t* rows) const;
  void worker(int instance);
  bool next_batch(std::unique_lock<std::mutex>& lock, Clock::time_point free_since, std::vector<Request>& batch,
                  std::vector<Request>& expired);
  Plan plan_batch(Clock::time_point now, Clock::time_point free_since = Clock::time_point::min(),
                  bool by_worker = false) const;
  bool eager() const;
  bool inline_allowed() const;
  void take(const Plan& plan, std::vector<Request>& batch);
  void expire(Clock::time_point now, std::vector<Request>& expired);
  bool compatible(const Request& a, const Request& b) const;
  void run_batch(int instance, std::vector<Request>& batch, std::vector<Buffer>& staging);
  void check_outputs(const Batch& batch, const BatchResult& result) const;
  void fail_expired(std::vector<Request>& expired);

  const BatcherConfig config_;
  std::shared_ptr<Executor> executor_;  // set until release_executor(), after stop()
  bool fixed_row_shapes_ = true;  // no -1 past the batch dimension: every request batches

  mutable std::mutex mu_;  // guards everything below up to stats_mu_
  std::condition_variable cv_;
  std::vector<std::deque<Request>> levels_;  // index 0 = priority 1
  int64_t queued_ = 0;
  int64_t queued_rows_ = 0;
  int busy_ = 0;  // workers running a batch
  int useless_waits_ = 0;
  int lone_deferred_runs_ = 0;   // deferred batches in a row that held a single request
  uint64_t deferred_submits_ = 0;
  bool stopping_ = false;
  Clock::time_point earliest_deadline_ = Clock::time_point::max();

  // Compute time of a batch, in ns: a moving average and the latest; -1 until measured.
  // The smaller of the two decides, so one cold first call does not linger.
  std::atomic<int64_t> batch_compute_avg_ns_{-1};
  std::atomic<int64_t> batch_compute_last_ns_{-1};

  std::shared_ptr<BatchObserver> observer_;  // read and written with std::atomic_load/store

  mutable std::mutex stats_mu_;
  BatcherStats stats_;

  std::mutex join_mu_;
  std::vector<std::thread> workers_;
};

}  // namespace loopserve
