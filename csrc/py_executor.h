// An executor that calls a Python callable once per batch, holding the GIL only for that call.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "executor.h"

namespace loopserve {

namespace py = pybind11;

py::dtype numpy_dtype(DType t);
// The DType of a numpy dtype (object, bytes_ and str_ arrays are BYTES); throws
// std::invalid_argument for dtypes the protocol lacks.
DType dtype_of(const py::dtype& d);

// BYTES tensors between their wire form and numpy object arrays of bytes. str elements are
// encoded as UTF-8; anything else throws std::invalid_argument.
py::array bytes_to_array(const std::byte* data, size_t nbytes, const std::vector<int64_t>& shape);
Buffer array_to_bytes(const py::array& array);

// Calls `fn(inputs: dict[str, np.ndarray]) -> outputs` where outputs is a dict by output
// name, a sequence in declared order, or (one output) a single array. The input arrays view
// the batcher's buffers and are valid only during the call.
// Thread-safety: run() may be called from several worker threads; each call takes the GIL.
// Destroy it with the GIL held (it owns Python references).
class PyExecutor final : public Executor {
 public:
  // staging[instance][input] = (address, capacity): buffers the callable owns (pinned host
  // memory for a GPU copy) and keeps alive; empty for none.
  // pass_instance: call `fn(inputs, instance)` (the batch's instance index, -1 for the submitting
  // thread), so a backend can keep per-instance state (a CUDA stream, staging buffers).
  PyExecutor(py::object fn, const std::vector<TensorSpec>& inputs, const std::vector<TensorSpec>& outputs,
             std::vector<std::vector<std::pair<uintptr_t, size_t>>> staging, bool pass_instance = false);

  void run(const Batch& batch, BatchResult& out) override;
  std::byte* staging(int instance, size_t input, size_t nbytes) override;

 private:
  py::object fn_;
  std::vector<py::str> input_names_;
  std::vector<py::str> output_names_;
  std::vector<TensorSpec> outputs_;
  std::vector<std::vector<std::pair<uintptr_t, size_t>>> staging_;
  bool pass_instance_ = false;
};

}  // namespace loopserve
