// The engine's door for requests from the HTTP front-end processes. One thread reads every
// front end's request ring, routes each request with the Router, and submits it to the
// chosen version's batcher (and a copy to each shadow version); each completion is written
// by the thread that finished the batch straight into that front end's response ring, with
// one wake-up per batch. No Python runs per request on this side.
//
// A round: the thread takes up to kRoundMessages messages from each channel in turn, then
// runs the batches it deferred (quick models run on this thread, as the event loop runs
// them in a single process: the round's requests form one batch), then sleeps on the
// channels' eventfds when all are empty.
//
// Before it sleeps, the thread may poll the rings for a while (adaptive, at most spin_us):
// on a virtual machine a core that halts costs the next wake-up tens of µs (DESIGN.md, "The
// hop to the engine"), more than a lone client's whole request takes in the engine. The
// window grows while the next request keeps coming soon after the rings empty (a client
// waiting on each answer) and shrinks to nothing when polling does not pay (idle, or rounds
// that keep finding many requests: the front ends are busy and the cores are theirs). Each
// poll yields the core, so a runnable thread on it is not kept waiting, and a yield that
// returns late (another thread wanted the core) closes the window. Off by default (spin_us 0).
//
// Thread-safety: every public member may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ipc/channel.h"
#include "serving/route_table.h"

namespace loopserve {

struct IngressStats {
  uint64_t requests = 0;   // messages taken from the rings
  uint64_t refused = 0;    // answered with an error before reaching a batcher
  uint64_t responses_dropped = 0;  // completions whose front end was gone
  uint64_t rounds = 0;
  uint64_t sleeps = 0;
  uint64_t spins = 0;       // polls that found a request before the thread slept
  uint64_t spin_window_us = 0;  // how long the thread polls now
};

class IngressLink;

class Ingress {
 public:
  // spin_us: the longest the thread polls empty rings before it sleeps; 0: never.
  explicit Ingress(std::shared_ptr<Router> router, int64_t spin_us = 0);
  ~Ingress();
  Ingress(const Ingress&) = delete;
  Ingress& operator=(const Ingress&) = delete;

  // A new channel, read from now on. Hand its region's descriptors to the front end.
  std::shared_ptr<ipc::ChannelRegion> open_channel(size_t ring_bytes);
  // Stops reading the channel; completions still due to it are dropped. Its memory goes
  // when the last of them has finished.
  void close_channel(const std::shared_ptr<ipc::ChannelRegion>& region);
  // Stops the thread (requests not yet taken from the rings are left there).
  void stop();
  IngressStats stats() const;

 private:
  void run();
  void wake();
  // Polls the rings until one holds a message (true) or the spin window ends (false).
  bool spin(const std::vector<std::shared_ptr<IngressLink>>& links);
  // After a sleep of `slept_us`: widens the window when polling that long would have caught
  // the request, narrows it when the rings stayed empty much longer.
  void adapt_after_sleep(int64_t slept_us);
  void handle(const RouteTable& table, const std::shared_ptr<IngressLink>& link, ipc::SlotHeader* slot,
              std::vector<std::shared_ptr<Batcher>>& deferred);

  std::shared_ptr<Router> router_;
  int control_efd_ = -1;
  int epoll_fd_ = -1;
  mutable std::mutex links_mu_;  // guards links_
  std::vector<std::shared_ptr<IngressLink>> links_;
  std::atomic<bool> stopping_{false};
  const int64_t spin_max_us_;
  int64_t spin_window_us_ = 0;  // the ingress thread's own; spin_window_shown_ for stats()
  std::atomic<int64_t> spin_window_shown_{0};
  std::atomic<uint64_t> requests_{0}, refused_{0}, rounds_{0}, sleeps_{0}, spins_{0};
  std::thread thread_;
};

}  // namespace loopserve
