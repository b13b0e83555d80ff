// Routing and submitting one decoded infer request, for every door by which requests enter the
// engine natively: the front ends' rings (serving/ingress.cpp) and the engine's own HTTP
// listener (http/server.cpp). One copy of the rules, so both answer the same statuses with the
// same messages.
//
// Thread-safety: free functions; the RouteTable they read is an immutable snapshot.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "batcher.h"
#include "completion.h"
#include "ipc/channel.h"
#include "serving/route_table.h"

namespace loopserve {

// A request answered with an error before it reached a batcher: HTTP status and message.
struct Refusal {
  uint16_t status;
  std::string message;
};

// The HTTP status of a failed completion.
uint16_t http_status(Status s);

// 128 random bits as 32 hex digits: an id nobody can guess from another one (for feedback).
std::string random_id();

// Where a request goes: its answering version, the shadows that get a copy, and its inputs
// in the model's declared order, viewing the tensors' memory (no copy).
struct Routed {
  std::shared_ptr<const VersionRoute> answering;
  std::vector<std::shared_ptr<const VersionRoute>> shadows;
  std::vector<InputView> views;
};

// Throws Refusal: 404 (no such model or version), 400 (inputs that do not fit the model).
// `raw`: Triton's raw binary form (the body is the one input). Empty `version`: the router
// chooses, by `key` when there is one.
Routed route_request(const RouteTable& table, std::string_view model, std::string_view version, std::string_view key,
                     std::vector<ipc::TensorIn>& tensors, bool raw);

// Submits to the answering version's batcher (Inline::kDeferred); its refusals become a
// Refusal (400 invalid, 429 queue full, 503 unavailable).
Batcher::Submitted submit_answering(Batcher& batcher, std::vector<InputView> views, uint64_t token,
                                    std::shared_ptr<CompletionSink> sink, int priority, int64_t timeout_us);

// Submits a copy to a shadow version; false when it refused (a shadow's refusal is its own,
// never the client's: the caller releases the copy's token).
bool submit_shadow(const std::shared_ptr<Batcher>& batcher, const std::vector<InputView>& views, uint64_t token,
                   std::shared_ptr<CompletionSink> sink, std::vector<std::shared_ptr<Batcher>>& deferred);

}  // namespace loopserve
