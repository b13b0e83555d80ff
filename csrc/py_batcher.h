// A Batcher owned for Python. Shared: the engine's native router also holds it while a
// version is routable.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "batcher.h"

namespace loopserve {

// Stops the batcher (GIL released: workers may need the GIL to finish a batch) and drops
// the executor's Python references (GIL held) when Python lets go of it.
class PyBatcher {
 public:
  PyBatcher(BatcherConfig config, std::shared_ptr<Executor> executor)
      : batcher_(std::make_shared<Batcher>(std::move(config), std::move(executor))) {}
  ~PyBatcher() {
    if (!batcher_) return;
    {
      pybind11::gil_scoped_release release;
      batcher_->stop();
    }
    batcher_->release_executor();  // destroyed here, with the GIL held
    batcher_.reset();
  }
  Batcher& get() { return *batcher_; }
  const std::shared_ptr<Batcher>& shared() const { return batcher_; }

 private:
  std::shared_ptr<Batcher> batcher_;
};

}  // namespace loopserve
