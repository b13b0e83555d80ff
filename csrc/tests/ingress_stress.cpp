// The multi-process data plane under ThreadSanitizer and AddressSanitizer (tests/test_native.py),
// in one process: four front-end threads, each with its own channel (small rings, so messages
// wrap and rings fill), send requests that the engine's ingress routes to an echo model and
// answers; meanwhile the model's version is swapped again and again (publish, wait until no
// snapshot names the old one, stop it), as a hot swap does. Every request must be answered
// exactly once, with status 200 and its own rows; and recorded once by the versions' feedback
// tap, which a drain thread empties meanwhile (the echo's output rows equal its input rows).
// Then a forged message (a tensor whose bytes do not match its shape) must be refused 400.
// Exits non-zero on failure.
#include <sys/eventfd.h>
#include <poll.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "batcher.h"
#include "executor.h"
#include "ipc/channel.h"
#include "serving/feedback_tap.h"
#include "serving/ingress.h"
#include "serving/route_table.h"
#include "tests/echo_route.h"

using namespace loopserve;

namespace {

using stress::echo_batcher;
using stress::route_to;

// Drains the tap until `done`, then once more; checks every block's columns agree and counts
// the requests recorded.
uint64_t drain_until(FeedbackTap& tap, const std::atomic<bool>& done, std::atomic<int>& failures) {
  uint64_t recorded = 0;
  for (bool last = false; !last;) {
    last = done.load();
    for (const FeedbackTap::Block& b : tap.drain_blocks()) {
      int64_t rows = 0;
      for (int64_t r : b.y.rows) rows += r;
      const bool ok = b.size() == b.id_ends.size() && b.size() == b.y.rows.size() && b.x.size() == 1 &&
                      b.y.shape.size() == 2 && b.y.shape[0] == rows && b.y.data.size() == size_t(rows) * 16 &&
                      b.x[0].data == b.y.data && b.x[0].rows == b.y.rows;
      if (!ok) {
        std::fprintf(stderr, "FAIL: a feedback block whose columns disagree\n");
        ++failures;
      }
      recorded += b.size();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return recorded;
}

}  // namespace

// Writes one request for the echo model with input `x` (its data: x.nbytes from `data`) into
// the ring and wakes the engine if it sleeps; false when the ring is full.
bool send_request(ipc::RingProducer& requests, const ipc::ChannelRegion& region, uint64_t token,
                  const ipc::TensorOut& x, const void* data) {
  const std::string model = "echo";
  const std::vector<ipc::TensorOut> tensors = {x};
  auto layout = ipc::plan_message(sizeof(ipc::WireRequest), model.size(), tensors);
  std::byte* p = requests.reserve(layout.size);
  if (p == nullptr) return false;
  ipc::WireRequest w{};
  w.token = token;
  w.timeout_us = -1;
  w.model_len = static_cast<uint16_t>(model.size());
  w.n_tensors = 1;
  std::memcpy(p, &w, sizeof w);
  std::memcpy(p + layout.text_at, model.data(), model.size());
  ipc::write_tensor_headers(p, layout, tensors);
  if (x.nbytes > 0) std::memcpy(p + layout.data_at[0], data, x.nbytes);
  if (requests.publish()) ipc::ChannelRegion::wake(region.request_efd());
  return true;
}

// One front end: `count` requests of 1-4 rows, up to `ahead` in flight, each answer checked.
void run_frontend(Ingress& ingress, int f, int count, int ahead, std::atomic<int>& failures) {
  auto region = ingress.open_channel(64 * 1024);
  ipc::RingProducer requests(region->request_control(), region->request_slots());
  ipc::RingConsumer responses(region->response_control(), region->response_slots());
  std::vector<int> answered(count, 0);
  int sent = 0, received = 0;
  while (received < count) {
    // Send while there is room (up to `ahead` in flight), then take whatever answers are there.
    while (sent < count && sent - received < ahead) {
      const int64_t rows = 1 + sent % 4;
      std::vector<int64_t> data(static_cast<size_t>(rows) * 2);
      for (size_t i = 0; i < data.size(); ++i) data[i] = int64_t{sent} * 100 + static_cast<int64_t>(i);
      const int64_t shape[2] = {rows, 2};
      const ipc::TensorOut x{"x", DType::kInt64, shape, 2, data.size() * 8};
      if (!send_request(requests, *region, static_cast<uint64_t>(sent), x, data.data())) break;  // full: answers first
      ++sent;
    }
    bool any = false;
    while (ipc::SlotHeader* s = responses.next()) {
      any = true;
      ipc::WireResponse w;
      std::memcpy(&w, s->payload(), sizeof w);
      if (w.token >= static_cast<uint64_t>(count) || answered[w.token]++ || w.status != 200) {
        std::fprintf(stderr, "FAIL: front end %d: token %llu status %u answered twice or wrongly\n", f,
                     static_cast<unsigned long long>(w.token), w.status);
        ++failures;
        continue;
      }
      auto t = ipc::read_tensors(s->payload(), s->payload_size, sizeof w + w.text_len, w.n_tensors);
      const int64_t rows = 1 + static_cast<int64_t>(w.token) % 4;
      bool ok = t.size() == 1 && t[0].shape.size() == 2 && t[0].shape[0] == rows && t[0].nbytes == size_t(rows) * 16;
      for (int64_t i = 0; ok && i < rows * 2; ++i) {
        int64_t v;
        std::memcpy(&v, t[0].data + i * 8, 8);
        ok = v == static_cast<int64_t>(w.token) * 100 + i;
      }
      if (!ok) {
        std::fprintf(stderr, "FAIL: front end %d: wrong rows for token %llu\n", f, static_cast<unsigned long long>(w.token));
        ++failures;
      }
      ++received;
    }
    responses.release_all_read();
    if (!any && (sent == count || sent - received >= ahead)) {
      if (responses.prepare_sleep()) {
        pollfd pfd{region->response_efd(), POLLIN, 0};
        ::poll(&pfd, 1, 100);
        ipc::ChannelRegion::clear(region->response_efd());
      }
    }
  }
  ingress.close_channel(region);
}

// A message whose tensor description says 0 bytes at the end of the message for a [4, 2]
// INT64 shape (a forged table: the rings are a trust boundary) is refused 400, not batched
// with 64 bytes read from whatever lies past the request.
void forged_tensor_is_refused(Ingress& ingress, std::atomic<int>& failures) {
  auto region = ingress.open_channel(64 * 1024);
  ipc::RingProducer requests(region->request_control(), region->request_slots());
  ipc::RingConsumer responses(region->response_control(), region->response_slots());
  const int64_t shape[2] = {4, 2};
  send_request(requests, *region, 7, {"x", DType::kInt64, shape, 2, 0}, nullptr);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  ipc::SlotHeader* s = nullptr;
  while ((s = responses.next()) == nullptr && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (s == nullptr) {
    std::fprintf(stderr, "FAIL: no answer to the forged message\n");
    ++failures;
  } else {
    ipc::WireResponse r;
    std::memcpy(&r, s->payload(), sizeof r);
    const std::string text(reinterpret_cast<const char*>(s->payload()) + sizeof r, r.text_len);
    if (r.token != 7 || r.status != 400 || text.find("0 bytes of data") == std::string::npos) {
      std::fprintf(stderr, "FAIL: the forged message was answered %u: %s\n", r.status, text.c_str());
      ++failures;
    }
    responses.release_all_read();
  }
  ingress.close_channel(region);
}

int main() {
  constexpr int kFrontends = 4;
  constexpr int kRequests = 4000;
  std::atomic<int> failures{0};
  auto router = std::make_shared<Router>();
  auto batcher = echo_batcher();
  auto tap = std::make_shared<FeedbackTap>(0, std::vector<size_t>{0}, size_t{1} << 20, size_t{1} << 30);
  router->set_model(route_to(batcher, 1, tap));
  Ingress ingress(router, 50);  // polling on: busy front ends must close its window

  std::atomic<bool> done{false};
  std::atomic<bool> drained{false};
  uint64_t recorded = 0;
  std::thread drainer([&] { recorded = drain_until(*tap, drained, failures); });
  std::thread swapper([&] {  // hot swaps while the front ends send
    int64_t version = 1;
    while (!done.load()) {
      auto next = echo_batcher();
      router->set_model(route_to(next, ++version, tap));
      router->wait_quiescent();
      batcher->stop();  // nothing can reach it any more: every request it took completes
      batcher = next;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });

  std::vector<std::thread> frontends;
  for (int f = 0; f < kFrontends; ++f) {
    frontends.emplace_back([&, f] { run_frontend(ingress, f, kRequests, 64, failures); });
  }
  for (auto& t : frontends) t.join();
  done.store(true);
  swapper.join();
  ingress.stop();
  batcher->stop();
  drained.store(true);
  drainer.join();
  const uint64_t dropped = tap->take_dropped();
  if (recorded != uint64_t{kFrontends} * kRequests || dropped != 0) {
    std::fprintf(stderr, "FAIL: the feedback tap recorded %llu requests, dropped %llu\n",
                 static_cast<unsigned long long>(recorded), static_cast<unsigned long long>(dropped));
    ++failures;
  }
  const IngressStats s = ingress.stats();
  if (s.requests != uint64_t{kFrontends} * kRequests || s.refused != 0) {
    std::fprintf(stderr, "FAIL: ingress took %llu requests, refused %llu\n", static_cast<unsigned long long>(s.requests),
                 static_cast<unsigned long long>(s.refused));
    ++failures;
  }
  // A lone client, one request at a time: the ingress's poll window opens (the next request
  // comes soon after the rings empty), so the path where a poll catches a request runs too.
  auto lone_batcher = echo_batcher();
  router->set_model(route_to(lone_batcher, 1000));
  Ingress lone(router, 2000);
  std::thread client([&] { run_frontend(lone, 0, 300, 1, failures); });
  client.join();
  lone.stop();
  lone_batcher->stop();
  const IngressStats ls = lone.stats();
  if (ls.requests != 300 || ls.refused != 0) {
    std::fprintf(stderr, "FAIL: the lone client's ingress took %llu requests, refused %llu\n",
                 static_cast<unsigned long long>(ls.requests), static_cast<unsigned long long>(ls.refused));
    ++failures;
  }
  auto forged_batcher = echo_batcher();
  router->set_model(route_to(forged_batcher, 2000));
  Ingress forged(router, 0);
  forged_tensor_is_refused(forged, failures);
  forged.stop();
  forged_batcher->stop();
  if (failures.load()) return 1;
  std::printf("lone client: %llu polls caught a request, %llu sleeps\nok\n", static_cast<unsigned long long>(ls.spins),
              static_cast<unsigned long long>(ls.sleeps));
  return 0;
}
