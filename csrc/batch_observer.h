// Something that looks at every batch a batcher ran successfully: the drift monitor.
#pragma once

#include "tensor.h"

namespace loopserve {

// Called on the thread that ran the batch, after the model and before the requests are
// completed, so it is on the latency path: an observer copies what it needs and returns
// (it may drop the batch instead). Must not throw. Implementations are shared between the
// batcher's threads and must be thread-safe.
class BatchObserver {
 public:
  virtual ~BatchObserver() = default;
  virtual void observe(const Batch& batch, const BatchResult& result) noexcept = 0;
};

}  // namespace loopserve
