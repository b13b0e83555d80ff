// Stresses the batcher's queue, scheduler and completion paths from many threads at once;
// built with ThreadSanitizer (or AddressSanitizer) by tests/test_native.py. Exits non-zero
// on any wrong answer, lost request or duplicate completion.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "batcher.h"
#include "completion.h"

using namespace loopserve;

namespace {

int failures = 0;
std::mutex failures_mu;

void fail(const char* what, uint64_t token) {
  std::lock_guard<std::mutex> lock(failures_mu);
  if (++failures < 20) std::fprintf(stderr, "FAIL: %s (token %llu)\n", what, static_cast<unsigned long long>(token));
}

// Echoes, but throws on every batch whose first value is a multiple of 97: a model failure
// confined to that batch.
class FlakyEcho final : public Executor {
 public:
  void run(const Batch& batch, BatchResult& out) override {
    float first;
    std::memcpy(&first, batch.inputs[0].data, sizeof first);
    if (static_cast<int64_t>(first) % 97 == 0) throw ModelError("flaky model refuses this batch");
    echo_.run(batch, out);
  }

 private:
  EchoExecutor echo_;
};

struct Submitted {
  std::vector<float> data;  // rows x 4, every value = token
  int64_t rows = 0;
  bool done = false;
};

// Checks every completion against what was submitted. Thread-safe.
class CheckingSink final : public CompletionSink {
 public:
  explicit CheckingSink(std::unordered_map<uint64_t, Submitted>& requests) : requests_(requests) {}
  void deliver(std::vector<Completion>&& items) override {
    for (Completion& c : items) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = requests_.find(c.token);
      if (it == requests_.end()) { fail("unknown token", c.token); continue; }
      if (it->second.done) { fail("completed twice", c.token); continue; }
      it->second.done = true;
      if (c.status == Status::kOk) {
        ++ok;
        const OutputTensor& o = c.result->outputs[0];
        if (c.rows != it->second.rows) { fail("wrong row count", c.token); continue; }
        const float* v = reinterpret_cast<const float*>(o.data.data()) + c.row_begin * 4;
        for (int64_t i = 0; i < c.rows * 4; ++i)
          if (v[i] != static_cast<float>(c.token)) { fail("rows of another request", c.token); break; }
      } else if (c.status == Status::kTimedOut) {
        ++timed_out;
      } else if (c.status == Status::kModelError) {
        ++model_errors;
      } else {
        fail("unexpected status", c.token);
      }
    }
  }
  std::atomic<uint64_t> ok{0}, timed_out{0}, model_errors{0};

 private:
  std::mutex mu_;
  std::unordered_map<uint64_t, Submitted>& requests_;
};

int run(int instances, bool adaptive) {
  BatcherConfig config;
  config.model_name = "stress";
  config.inputs = {TensorSpec{"x", DType::kFP32, {4}}};
  config.outputs = {TensorSpec{"x", DType::kFP32, {4}}};
  config.max_batch_size = 16;
  config.preferred_batch_sizes = {8};
  config.max_queue_delay_us = 200;
  config.adaptive_queue_delay = adaptive;
  config.queue_capacity = 64;
  config.priority_levels = 3;
  config.default_priority_level = 2;
  config.instances = instances;

  constexpr int kThreads = 6, kPerThread = 1500;
  std::unordered_map<uint64_t, Submitted> requests;
  for (uint64_t t = 1; t <= kThreads * kPerThread; ++t) {
    Submitted& s = requests[t];
    s.rows = static_cast<int64_t>(t % 5) + 1;
    s.data.assign(static_cast<size_t>(s.rows) * 4, static_cast<float>(t));
  }
  auto sink = std::make_shared<CheckingSink>(requests);
  std::atomic<uint64_t> rejected{0};
  uint64_t inline_runs = 0;
  {
    Batcher batcher(config, std::make_shared<FlakyEcho>());
    std::atomic<bool> sampling{true};
    std::thread sampler([&] {
      while (sampling.load()) (void)batcher.stats();
    });
    std::vector<std::thread> threads;
    for (int th = 0; th < kThreads; ++th)
      threads.emplace_back([&, th] {
        std::mt19937 rng(static_cast<unsigned>(th));
        for (int i = 0; i < kPerThread; ++i) {
          const uint64_t token = static_cast<uint64_t>(th) * kPerThread + static_cast<uint64_t>(i) + 1;
          const Submitted& s = requests.at(token);
          const int priority = static_cast<int>(rng() % 4);  // 0 = default
          const int64_t timeout_us = (rng() % 10 == 0) ? 50 : -1;
          const auto mode = static_cast<Batcher::Inline>(rng() % 3);  // never, now, deferred
          for (;;) {
            try {
              auto done = batcher.submit(
                  {InputView(DType::kFP32, s.data.data(), {s.rows, 4})}, token,
                  sink, priority, timeout_us, mode);
              if (done == Batcher::Submitted::kDeferred) batcher.run_deferred();
              break;
            } catch (const QueueFull&) {
              rejected.fetch_add(1);
              std::this_thread::yield();
            }
          }
        }
      });
    for (auto& t : threads) t.join();
    batcher.stop();  // runs everything still queued
    inline_runs = batcher.stats().inline_runs;
    sampling = false;
    sampler.join();
    bool refused = false;
    try {
      const Submitted& s = requests.at(1);
      batcher.submit({InputView(DType::kFP32, s.data.data(), {s.rows, 4})}, 1,
                     sink);
    } catch (const Unavailable&) {
      refused = true;
    }
    if (!refused) fail("a stopped batcher accepted a request", 1);
  }
  for (auto& [token, s] : requests)
    if (!s.done) fail("never completed", token);
  std::printf("instances=%d adaptive=%d inline_runs=%llu ok=%llu timed_out=%llu model_errors=%llu queue_full_retries=%llu\n",
              instances, adaptive, static_cast<unsigned long long>(inline_runs),
              static_cast<unsigned long long>(sink->ok.load()),
              static_cast<unsigned long long>(sink->timed_out.load()),
              static_cast<unsigned long long>(sink->model_errors.load()),
              static_cast<unsigned long long>(rejected.load()));
  if (sink->model_errors.load() == 0) fail("the flaky model never failed: the error path was not exercised", 0);
  return 0;
}

}  // namespace

int main() {
  run(1, true);
  run(3, false);
  run(3, true);
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
