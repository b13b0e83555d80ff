// How finished requests travel back to whoever submitted them.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tensor.h"

namespace loopserve {

enum class Status : uint8_t { kOk = 0, kTimedOut = 1, kModelError = 2, kUnavailable = 3 };

struct Completion {
  uint64_t token = 0;  // the submitter's own id for the request
  Status status = Status::kOk;
  // kOk: the batch's outputs; this request owns rows [row_begin, row_begin + rows).
  std::shared_ptr<const BatchResult> result;
  int64_t row_begin = 0;
  int64_t rows = 0;
  bool whole = false;  // the model does not batch: the request owns the outputs whole
  // Otherwise: why it failed (shared by all the requests of a failed batch).
  std::shared_ptr<const std::string> error;
};

// Receives completions. Thread-safe: deliver() is called from any batcher worker thread.
class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // Called once per batch per sink, with every completion of that batch bound for this sink.
  virtual void deliver(std::vector<Completion>&& items) = 0;
};

// The completions bound for one event loop. Workers append; the loop owns the read side of
// an eventfd and drains everything at once when it becomes readable. The eventfd is written
// only when the queue goes from empty to non-empty, so the loop wakes at most once per
// batch, and less under load. Thread-safe: many producers, one consumer.
class CompletionQueue final : public CompletionSink {
 public:
  CompletionQueue();
  ~CompletionQueue() override;
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  int fd() const noexcept { return fd_; }
  void deliver(std::vector<Completion>&& items) override;
  // Takes everything delivered so far and re-arms the wake-up. Never blocks.
  std::vector<Completion> drain();
  // While quiet, deliveries do not signal the eventfd: the consumer runs a batch on its own
  // thread and drains right after, so the wake-up would only cost two system calls. Leaving
  // quiet with `signal_pending` signals what came meanwhile, for a consumer that will not
  // drain at once.
  void set_quiet(bool quiet, bool signal_pending = false);

 private:
  int fd_ = -1;
  std::mutex mu_;
  std::vector<Completion> items_;
  bool signalled_ = false;  // the eventfd is readable; changed only together with it
  bool quiet_ = false;
};

// One blocking waiter for one request (the synchronous API). Thread-safe.
class WaitSink final : public CompletionSink {
 public:
  void deliver(std::vector<Completion>&& items) override;
  Completion wait();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Completion item_;
};

}  // namespace loopserve
