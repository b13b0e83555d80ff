// Predictions kept for ground-truth feedback, taken by the thread that completes a request
// in the engine (no Python on that path) and handed in batches to the engine's Python side,
// which keeps the record and joins labels (python/loopserve/monitor/feedback.py).
//
// Thread-safety: record() from any thread; drain() from any thread. A bounded queue: when
// the Python side falls behind, predictions are dropped and counted, never waited for.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "completion.h"
#include "tensor.h"

namespace loopserve {

class FeedbackTap {
 public:
  struct Tensor {
    DType dtype;
    std::vector<int64_t> shape;
    std::string data;
  };
  struct Entry {
    std::string id;
    std::string group;  // the request's `group` parameter as JSON text; empty when none
    double time;        // seconds since the Unix epoch, when the prediction was made
    Tensor y;           // the recorded output's rows
    std::vector<Tensor> x;  // the recorded inputs' rows, in `inputs` order
  };

  // output: index of the recorded output; inputs: indices of the recorded inputs.
  FeedbackTap(size_t output, std::vector<size_t> inputs, size_t capacity)
      : output_(output), inputs_(std::move(inputs)), capacity_(capacity) {}

  void record(const std::string& id, const std::string& group, const Completion& c,
              const std::vector<InputView>& inputs) {
    if (c.result == nullptr || output_ >= c.result->outputs.size()) return;
    Entry e;
    e.id = id;
    e.group = group;
    e.time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    const OutputTensor& o = c.result->outputs[output_];
    e.y.dtype = o.dtype;
    e.y.shape = o.shape;
    size_t begin = 0, nbytes = o.data.size();
    if (!c.whole && !o.shape.empty() && o.shape[0] > 0) {
      const size_t row = nbytes / static_cast<size_t>(o.shape[0]);
      begin = static_cast<size_t>(c.row_begin) * row;
      nbytes = static_cast<size_t>(c.rows) * row;
      e.y.shape[0] = c.rows;
    }
    e.y.data.assign(reinterpret_cast<const char*>(o.data.data()) + begin, nbytes);
    for (size_t i : inputs_) {
      if (i >= inputs.size()) continue;
      const InputView& v = inputs[i];
      const size_t n = v.nbytes ? v.nbytes : static_cast<size_t>(element_count(v.shape)) * dtype_size(v.dtype);
      e.x.push_back(Tensor{v.dtype, v.shape, std::string(reinterpret_cast<const char*>(v.data), n)});
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    entries_.push_back(std::move(e));
  }

  std::vector<Entry> drain() {
    std::vector<Entry> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(entries_);
    return out;
  }

  uint64_t dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_;
  }

 private:
  const size_t output_;
  const std::vector<size_t> inputs_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  uint64_t dropped_ = 0;
};

}  // namespace loopserve
