// What runs a formed batch: a model behind some runtime.
#pragma once

#include <cstring>
#include <stdexcept>
#include <string>

#include "tensor.h"

namespace loopserve {

// The model's own failure; its message reaches every request of the batch.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thread-safety: run() is called concurrently by up to `instances` worker threads, each
// passing its own instance index; an executor must allow that.
class Executor {
 public:
  virtual ~Executor() = default;
  // Runs one batch and fills `out.outputs`, one per declared output, in declared order, each
  // with the batch dimension first. Throws ModelError (or any std::exception) on failure.
  virtual void run(const Batch& batch, BatchResult& out) = 0;
  // Where the batcher should gather input `input` of a batch run by `instance`, when the
  // executor wants it somewhere special (pinned host memory for a GPU copy); nullptr for
  // the batcher's own buffers. The memory must hold `nbytes` and stay valid while in use.
  // Instance -1 is a batch run on the submitting thread, concurrently with the instances.
  virtual std::byte* staging(int /*instance*/, size_t /*input*/, size_t /*nbytes*/) {
    return nullptr;
  }
};

// Returns its inputs as its outputs (output i = input i). The cheapest possible model:
// it measures the batcher alone, and makes misrouted rows visible in tests.
class EchoExecutor final : public Executor {
 public:
  void run(const Batch& batch, BatchResult& out) override {
    out.outputs.resize(batch.inputs.size());
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      const BatchInput& in = batch.inputs[i];
      OutputTensor& o = out.outputs[i];
      o.dtype = in.dtype;
      o.shape = in.shape;
      o.data.reserve(in.nbytes);
      std::memcpy(o.data.data(), in.data, in.nbytes);
    }
  }
};

}  // namespace loopserve
