// Predictions kept for ground-truth feedback, taken by the thread that completes a request
// in the engine (no Python on that path) and handed in blocks to the engine's Python side,
// which keeps the record and joins labels (python/loopserve/monitor/feedback.py).
//
// A request's id, group and rows are appended to the open block's columns: no allocation per
// request (a buffer grows now and then), and a drain takes whole blocks, which the Python side
// records with a few numpy calls. Both matter to the engine's HTTP loop: a tuple and arrays per
// request kept the drain thread on the GIL that the loop's batches need, and freeing a small
// allocation per request from the drain thread contended for the allocator's lock with the
// loop allocating the next ones (the tail at 64 clients, DESIGN.md).
//
// Thread-safety: every member from any thread, under one mutex (a record holds it for the copy
// of its rows, and now and then a buffer's growth). A bounded queue, in requests and in bytes
// (an empty tap takes any one request): when the Python side falls behind, predictions are
// dropped and counted, never waited for.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "completion.h"
#include "tensor.h"

namespace loopserve {

class FeedbackTap {
 public:
  // One tensor of consecutive requests, laid end to end along its first dimension (a 0-d
  // tensor counts as one row); rows[i] is how many of its rows are the block's i-th request's.
  struct Column {
    DType dtype = DType::kFP32;
    std::vector<int64_t> shape;  // [rows of all the block's requests, dims after the first...]
    std::string data;
    std::vector<int64_t> rows;
  };
  // Consecutive requests whose recorded tensors agree in dtype and in every dimension but the
  // first. Request i's id is ids[id_ends[i-1], id_ends[i]), its group (the `group` parameter
  // as JSON text, empty when none) likewise.
  struct Block {
    std::string ids, groups;
    std::vector<size_t> id_ends, group_ends;
    std::vector<double> times;  // seconds since the Unix epoch, when each prediction was made
    Column y;                   // the recorded output
    std::vector<Column> x;      // the recorded inputs, in `inputs` order
    size_t size() const { return times.size(); }
  };

  // output: index of the recorded output; inputs: indices of the recorded inputs; at most
  // `capacity` requests and `max_bytes` of their tensors held until drained.
  FeedbackTap(size_t output, std::vector<size_t> inputs, size_t capacity, size_t max_bytes)
      : output_(output), inputs_(std::move(inputs)), capacity_(capacity), max_bytes_(max_bytes) {}

  void record(const std::string& id, const std::string& group, const Completion& c,
              const std::vector<InputView>& inputs) {
    if (c.result == nullptr || output_ >= c.result->outputs.size()) return;
    for (size_t i : inputs_)
      if (i >= inputs.size()) return;
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    const OutputTensor& o = c.result->outputs[output_];
    // The request's own rows of the batch's output.
    const std::byte* y = o.data.data();
    size_t y_bytes = o.data.size();
    int64_t y_rows = o.shape.empty() ? 1 : o.shape[0];
    if (!c.whole && !o.shape.empty() && o.shape[0] > 0) {
      const size_t row = y_bytes / static_cast<size_t>(o.shape[0]);
      y += static_cast<size_t>(c.row_begin) * row;
      y_bytes = static_cast<size_t>(c.rows) * row;
      y_rows = c.rows;
    }
    size_t bytes = y_bytes;
    for (size_t i : inputs_) bytes += input_bytes(inputs[i]);
    std::lock_guard<std::mutex> lock(mu_);
    if (held_ >= capacity_ || (held_ > 0 && held_bytes_ + bytes > max_bytes_)) {
      ++dropped_;
      return;
    }
    if (blocks_.empty() || !fits(blocks_.back(), o.dtype, o.shape, inputs)) blocks_.push_back(open_block(o, inputs));
    Block& b = blocks_.back();
    b.ids += id;
    b.id_ends.push_back(b.ids.size());
    b.groups += group;
    b.group_ends.push_back(b.groups.size());
    b.times.push_back(now);
    append(b.y, y, y_bytes, y_rows);
    for (size_t k = 0; k < inputs_.size(); ++k) {
      const InputView& v = inputs[inputs_[k]];
      append(b.x[k], v.data, input_bytes(v), v.shape.empty() ? 1 : v.shape[0]);
    }
    ++held_;
    held_bytes_ += bytes;
  }

  // Every block recorded since the last drain, oldest first.
  std::vector<Block> drain_blocks() {
    std::vector<Block> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(blocks_);
    held_ = held_bytes_ = 0;
    return out;
  }

  // Predictions dropped since the last call.
  uint64_t take_dropped() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(dropped_, 0);
  }

 private:
  static size_t input_bytes(const InputView& v) {
    return v.nbytes ? v.nbytes : static_cast<size_t>(element_count(v.shape)) * dtype_size(v.dtype);
  }
  static bool same_tail(const Column& c, DType dtype, const std::vector<int64_t>& shape) {
    if (c.dtype != dtype) return false;
    if (shape.empty()) return c.shape.size() == 1;
    return std::equal(c.shape.begin() + 1, c.shape.end(), shape.begin() + 1, shape.end());
  }
  static Column open_column(DType dtype, const std::vector<int64_t>& shape) {
    Column c;
    c.dtype = dtype;
    c.shape = shape.empty() ? std::vector<int64_t>{0} : shape;
    c.shape[0] = 0;
    return c;
  }
  static void append(Column& c, const std::byte* data, size_t nbytes, int64_t rows) {
    c.data.append(reinterpret_cast<const char*>(data), nbytes);
    c.rows.push_back(rows);
    c.shape[0] += rows;
  }
  bool fits(const Block& b, DType y_dtype, const std::vector<int64_t>& y_shape,
            const std::vector<InputView>& inputs) const {
    if (!same_tail(b.y, y_dtype, y_shape)) return false;
    for (size_t k = 0; k < inputs_.size(); ++k)
      if (!same_tail(b.x[k], inputs[inputs_[k]].dtype, inputs[inputs_[k]].shape)) return false;
    return true;
  }
  Block open_block(const OutputTensor& y, const std::vector<InputView>& inputs) const {
    Block b;
    b.y = open_column(y.dtype, y.shape);
    for (size_t i : inputs_) b.x.push_back(open_column(inputs[i].dtype, inputs[i].shape));
    return b;
  }

  const size_t output_;
  const std::vector<size_t> inputs_;
  const size_t capacity_;
  const size_t max_bytes_;
  mutable std::mutex mu_;
  std::vector<Block> blocks_;
  size_t held_ = 0;        // requests in blocks_
  size_t held_bytes_ = 0;  // and their tensors' bytes
  uint64_t dropped_ = 0;
};

}  // namespace loopserve
