// Tensor descriptions shared by the batcher and its executors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "buffer.h"
#include "dtype.h"

namespace loopserve {

// A declared model input or output. With batching, `dims` are the dimensions of one row
// (the batch dimension is implicit); without, they are the whole shape. -1 matches any size.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFP32;
  std::vector<int64_t> dims;
};

// The bytes a tensor of `shape` takes (not BYTES); false when a dimension is negative or the
// count overflows (a shape sent by a client can be anything).
inline bool checked_nbytes(DType dtype, const std::vector<int64_t>& shape, size_t* out) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  *out = static_cast<size_t>(n);
  return true;
}

// One input of one request, borrowed: the submitter keeps the memory alive until the
// request's completion has been delivered (or hands it over in `storage`). `shape` is the
// full shape, batch dimension first.
struct InputView {
  DType dtype = DType::kFP32;
  const std::byte* data = nullptr;
  std::vector<int64_t> shape;
  // The bytes at `data`, for every dtype: the batcher refuses a numeric input whose shape
  // needs more or fewer (the engine's rings are a trust boundary: a forged message could
  // otherwise have the batch copy memory past the request).
  size_t nbytes = 0;
  std::shared_ptr<const Buffer> storage;  // owns `data` when the submitter could not lend it

  InputView() = default;
  // For a caller whose numeric buffer holds exactly what `shape` needs (tests, benchmarks).
  InputView(DType dtype_, const void* data_, std::vector<int64_t> shape_)
      : dtype(dtype_), data(static_cast<const std::byte*>(data_)), shape(std::move(shape_)) {
    if (dtype != DType::kBytes && !checked_nbytes(dtype, shape, &nbytes)) nbytes = 0;
  }
};

// One input of a formed batch, as handed to an executor: contiguous, batch dimension first.
struct BatchInput {
  DType dtype = DType::kFP32;
  const std::byte* data = nullptr;
  std::vector<int64_t> shape;
  size_t nbytes = 0;
};

struct Batch {
  int instance = 0;   // which of the model's instances runs it, 0..instances-1; -1: the submitter
  int64_t rows = 0;   // sum of the rows of its requests (1 when the model does not batch)
  std::vector<BatchInput> inputs;  // in the order of the model's declared inputs
};

// An output the executor produced for a whole batch: batch dimension first.
struct OutputTensor {
  DType dtype = DType::kFP32;
  std::vector<int64_t> shape;
  Buffer data;
};

// Everything one batch produced; shared (read-only) by the completions of its requests.
struct BatchResult {
  std::vector<OutputTensor> outputs;  // in the order of the model's declared outputs
};

inline int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace loopserve
