// What the native HTTP server's loop shares with the threads that complete its requests'
// batches (http/server.h): answering a completed request (encode, write, feedback, latency),
// handing its connection back to the loop, and the counts the server reports.
//
// Thread-safety: complete() and post_done() from any thread; take_done() on the loop thread;
// the counts under stats_mu_ (or atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "completion.h"
#include "http/infer_codec.h"
#include "serving/route_table.h"

namespace loopserve::http {

class Connection;

struct LatencyCounts {
  std::vector<uint64_t> counts;  // one per bound, then +Inf
  double sum = 0;
};

struct ServerStats {
  uint64_t accepted = 0;      // connections
  uint64_t served = 0;        // infer requests answered natively (any status)
  uint64_t handed_off = 0;    // connections handed to a front end
  uint64_t handoff_failed = 0;  // answered 503 instead: no front end took them in time
  uint64_t send_timeouts = 0;   // closed: the client took nothing of its answer for send_timeout_s
  uint64_t answers_by_loop = 0;  // written by the loop for a model's worker that had a whole batch waiting
  uint64_t connections = 0;   // open now (the loop's)
  std::map<std::string, uint64_t> overload_refused;  // by model
  std::map<std::pair<std::string, int64_t>, LatencyCounts> latency;  // 200s, by model and version
};

// A request the native path took, on its way through a batcher: what its answer needs.
struct Pending {
  std::shared_ptr<Connection> conn;
  std::shared_ptr<const VersionRoute> route;
  std::shared_ptr<DecodedInfer> request;  // owns the inputs' memory, the id, the group
  std::string model;
  std::vector<InputView> inputs;  // kept only for feedback
  std::vector<ChosenOutput> chosen;  // the outputs to answer with, in order
  std::chrono::steady_clock::time_point start;
  bool answers = true;  // false: a shadow's copy
  bool keep_alive = true;
};

// Thread-safety: complete() and post_done() from any thread; take_done(), answer_handed() and
// loop_gone() on the loop thread; the counts under stats_mu_ (or atomic). The loop thread's id
// is set before any request.
class ServerState {
 public:
  explicit ServerState(std::vector<double> latency_bounds);
  ~ServerState();

  // A request's completion, on the thread that completed its batch: answers it there, or,
  // when that is a model's worker and a whole batch already waits for the model, hands it to
  // the loop (answer_handed), so that the model goes on to that batch at once.
  void complete(Connection& conn, Completion& c);
  // The loop thread: answers the completions handed to it.
  void answer_handed();
  // The connection's request is answered: the loop takes it up again.
  void post_done(std::shared_ptr<Connection> conn);
  std::vector<std::shared_ptr<Connection>> take_done();
  // The loop has stopped: a connection answered from now on is shut once its answer is written.
  void loop_gone();
  int wake_fd() const { return wake_fd_; }
  // Any thread: the loop takes a turn soon (stop).
  void wake();
  void set_loop_thread(std::thread::id id) { loop_thread_ = id; }

  void count_overload(const std::string& model);
  void count_served() { served_.fetch_add(1, std::memory_order_relaxed); }
  void fill(ServerStats& s) const;

  std::atomic<bool> stopping{false};  // answers say `connection: close` from now on

 private:
  void observe(const std::string& model, int64_t version, double seconds);
  void answer(Connection& conn, Completion& c);
  bool hand_to_loop(Connection& conn, Completion& c);
  void signal_locked();

  const std::vector<double> bounds_;
  int wake_fd_ = -1;
  std::thread::id loop_thread_;
  std::mutex done_mu_;  // guards done_, handed_, signalled_, loop_gone_
  std::vector<std::shared_ptr<Connection>> done_;
  std::vector<std::pair<std::shared_ptr<Connection>, Completion>> handed_;
  bool signalled_ = false;
  bool loop_gone_ = false;
  mutable std::mutex stats_mu_;  // guards overload_, latency_
  std::map<std::string, uint64_t> overload_;
  std::map<std::pair<std::string, int64_t>, LatencyCounts> latency_;
  std::atomic<uint64_t> served_{0}, answers_by_loop_{0};
};

}  // namespace loopserve::http
