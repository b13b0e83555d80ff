// The stress tests' model: an echo batcher (INT64 [2] in and out), and a route that answers
// with a batcher under its model's name, for the ingress and the native HTTP server alike.
#pragma once

#include <memory>
#include <utility>

#include "batcher.h"
#include "executor.h"
#include "serving/route_table.h"

namespace loopserve::stress {

inline std::shared_ptr<Batcher> echo_batcher() {
  BatcherConfig c;
  c.model_name = "echo";
  c.inputs = {TensorSpec{"x", DType::kInt64, {2}}};
  c.outputs = {TensorSpec{"x", DType::kInt64, {2}}};
  c.max_batch_size = 16;
  c.max_queue_delay_us = 100;
  c.instances = 2;
  return std::make_shared<Batcher>(c, std::make_shared<EchoExecutor>());
}

inline std::shared_ptr<const ModelRoute> route_to(std::shared_ptr<Batcher> batcher, int64_t version,
                                                  std::shared_ptr<FeedbackTap> feedback = nullptr) {
  auto v = std::make_shared<VersionRoute>();
  v->version = version;
  v->batcher = std::move(batcher);
  v->feedback = std::move(feedback);
  auto r = std::make_shared<ModelRoute>();
  r->name = v->batcher->config().model_name;
  r->loaded = {v};
  r->answering = {{1.0, v}};
  return r;
}

}  // namespace loopserve::stress
