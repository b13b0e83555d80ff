// The engine's native HTTP/1.1 server for the infer route (http.native_infer).
//
// It owns the public port. One loop thread (epoll) accepts, reads, parses heads
// (picohttpparser) and, for `POST /v2/models/{m}[/versions/{v}]/infer` with a body the
// native codec takes (http/infer_codec.h: JSON or binary tensors), routes and submits the request to the batchers
// itself with the ingress's own rules (serving/dispatch.h); a quick model's batch runs on
// this thread at the end of its turn, as the ingress runs it. The thread that completes a
// batch encodes each answer and writes it (one write). No Python runs per request.
//
// Every other request, and any connection the loop does not finish reading a request from
// quickly (`stall_s`: a slow or hostile client), is handed with the bytes read so far to a
// Python front end (http/handoff.h), which serves it with every route, limit and error
// message as it always has; from then on that connection is the front end's.
//
// Per connection, one request at a time: pipelined requests are answered in order, and the
// next is not read while an answer waits for the client to read (backpressure); an answer the
// client takes nothing of for `send_timeout_s` closes the connection. On stop the loop drains:
// it accepts and reads no more, and keeps writing what is due (the answers of requests in
// flight too) until all is out or `drain_s` has passed. Overload: as
// server/admission.py, an infer request is refused at once with 429 and Retry-After while the
// loop runs more than `overload_wait_ms` behind with at least `overload_min_connections`
// open; the batchers' own refusals (a full queue) answer 429 as through the ingress.
//
// Thread-safety: HttpServer's public members may be called from any thread. The loop and the
// threads that complete its requests share a ServerState (http/server_state.h).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "http/connection.h"
#include "http/handoff.h"
#include "http/request_head.h"
#include "http/server_state.h"
#include "serving/route_table.h"

namespace loopserve::http {

struct ServerOptions {
  size_t max_body_bytes = 64 << 20;     // http.max_body_bytes: larger ones go to Python (413)
  size_t native_body_bytes = 1 << 20;   // larger bodies go to Python (it decodes them off its loop)
  size_t max_head_bytes = 16 << 10;     // a larger head goes to Python (its limit answers it)
  size_t max_connections = 2048;        // past it, new connections go to Python (its limit answers);
                                        // and at most this many wait for a front end to take them
  double keep_alive_s = 5.0;            // an idle connection closes (a fresh one goes to Python)
  double stall_s = 0.2;                 // a request not whole within this goes to Python
  double send_timeout_s = 30.0;         // an answer the client takes nothing of this long: closed
  double drain_s = 30.0;                // on stop, how long answers may take to go out
  double handoff_wait_s = 10.0;         // a connection no front end took this long: answered 503
  double overload_wait_ms = 50.0;
  size_t overload_min_connections = 64;
  std::string overload_message;         // server/admission.py's, word for word
  std::vector<double> latency_bounds;   // server/latency.py's buckets (seconds)
};

class HttpServer {
 public:
  // listen_fd: a bound, listening TCP socket (taken).
  HttpServer(std::shared_ptr<Router> router, int listen_fd, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The Unix socket over which front end `index` takes connections handed to it (taken).
  void set_handoff(int index, int fd);
  // Stops accepting and reading new requests; requests in flight are answered (with
  // `connection: close`) and every answer is written out, for `drain_s` at most; then returns.
  void stop();
  ServerStats stats() const;

 private:
  enum class Served { kSubmitted, kAnswered, kDeclined };

  void run();
  void begin_drain();
  // Runs the batches this turn deferred so far (quick models), on the loop thread.
  void run_deferred();
  void accept_all();
  void read_from(Connection& conn);
  void advance(const std::shared_ptr<Connection>& conn);
  Served serve(const std::shared_ptr<Connection>& conn, const InferHead& head, const char* body);
  void answer_now(Connection& conn, uint16_t status, std::string_view body, bool keep_alive);
  void hand_off(const std::shared_ptr<Connection>& conn);
  void close(const std::shared_ptr<Connection>& conn);
  bool scan_timers();  // true when a flushed answer let its connection go on
  void add(const std::shared_ptr<Connection>& conn);

  std::shared_ptr<Router> router_;
  ServerOptions options_;
  std::shared_ptr<ServerState> state_;
  Handoff handoff_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> accepted_{0}, connections_{0}, send_timeouts_{0};
  std::once_flag stop_once_;
  std::chrono::steady_clock::time_point drain_deadline_;  // set once by stop(), before stopping_
  // The loop thread's own:
  bool draining_ = false;  // stopped: no new requests; the answers due still go out
  std::unordered_map<int64_t, std::shared_ptr<Connection>> conns_;
  int64_t next_seq_ = 2;  // 0 and 1 are the listener and the wake-up
  std::shared_ptr<const RouteTable> table_;  // this turn's snapshot (let go before sleeping)
  std::vector<std::shared_ptr<Batcher>> deferred_;
  std::vector<char> read_scratch_;  // every read lands here first
  std::chrono::steady_clock::time_point turn_start_;
  double lag_s_ = 0;  // how long the last turn took: what a request arriving at its start waited
  // How much later than its timeout this turn's wait returned (the process was stopped, or off
  // its core): what a request arriving while it slept may have waited, as admission.py's timer.
  double overslept_s_ = 0;
  double late_pending_s_ = 0;  // lateness of waits that read nothing yet
  std::thread thread_;
};

}  // namespace loopserve::http
