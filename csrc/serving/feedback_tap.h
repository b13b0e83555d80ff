// Predictions kept for ground-truth feedback, taken by the thread that completes a request
// in the engine (no Python on that path) and handed in batches to the engine's Python side,
// which keeps the record and joins labels (python/loopserve/monitor/feedback.py). They go
// over as blocks of columns (drain_blocks): a few numpy calls record thousands of requests,
// where a tuple and arrays per request held the GIL long enough to delay the batches that
// the engine's HTTP loop runs under it (the tail at 64 clients, DESIGN.md).
//
// Thread-safety: record() from any thread; drain() from any thread. A bounded queue: when
// the Python side falls behind, predictions are dropped and counted, never waited for.
#pragma once

#include <algorithm>
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

  // Consecutive requests whose tensors agree in dtype and in every dimension but the first,
  // laid end to end along it (a 0-d tensor counts as one row): column k of `x` is the k-th
  // recorded input, rows[i] how many of a column's rows are request i's.
  struct Column {
    DType dtype = DType::kFP32;
    std::vector<int64_t> shape;  // [rows of all the block's requests, dims after the first...]
    std::string data;
    std::vector<int64_t> rows;
  };
  struct Block {
    std::vector<std::string> ids;
    std::vector<std::string> groups;
    std::vector<double> times;
    Column y;
    std::vector<Column> x;
  };

  std::vector<Block> drain_blocks() {
    std::vector<Block> blocks;
    for (Entry& e : drain()) {
      if (blocks.empty() || !fits(blocks.back(), e)) blocks.push_back(open_block(e));
      Block& b = blocks.back();
      b.ids.push_back(std::move(e.id));
      b.groups.push_back(std::move(e.group));
      b.times.push_back(e.time);
      append(b.y, e.y);
      for (size_t k = 0; k < e.x.size(); ++k) append(b.x[k], e.x[k]);
    }
    return blocks;
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
  static int64_t first_dim(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
  static bool same_tail(const Column& c, const Tensor& t) {
    if (c.dtype != t.dtype) return false;
    if (t.shape.empty()) return c.shape.size() == 1;
    return std::equal(c.shape.begin() + 1, c.shape.end(), t.shape.begin() + 1, t.shape.end());
  }
  static Column open_column(const Tensor& t) {
    Column c;
    c.dtype = t.dtype;
    c.shape = t.shape.empty() ? std::vector<int64_t>{0} : t.shape;
    c.shape[0] = 0;
    return c;
  }
  static void append(Column& c, const Tensor& t) {
    c.data += t.data;
    c.rows.push_back(first_dim(t));
    c.shape[0] += first_dim(t);
  }
  static bool fits(const Block& b, const Entry& e) {
    if (!same_tail(b.y, e.y) || b.x.size() != e.x.size()) return false;
    for (size_t k = 0; k < e.x.size(); ++k)
      if (!same_tail(b.x[k], e.x[k])) return false;
    return true;
  }
  static Block open_block(const Entry& e) {
    Block b;
    b.y = open_column(e.y);
    for (const Tensor& t : e.x) b.x.push_back(open_column(t));
    return b;
  }

  const size_t output_;
  const std::vector<size_t> inputs_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  uint64_t dropped_ = 0;
};

}  // namespace loopserve
