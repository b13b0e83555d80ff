#include "http/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "http/infer_codec.h"
#include "http/response.h"
#include "http/request_head.h"
#include "serving/dispatch.h"
#include "serving/feedback_tap.h"

namespace loopserve::http {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kListenerKey = 0;
constexpr uint64_t kWakeKey = 1;
constexpr size_t kReadChunk = 64 << 10;
constexpr int kMaxAcceptsPerTurn = 256;
constexpr auto kScanEvery = std::chrono::milliseconds(50);
constexpr int kRounds = 4;  // of deferred batches and answered connections per turn
constexpr int kEventsPerEarlyRun = 64;  // events read before their deferred batches run

double seconds_since(Clock::time_point t, Clock::time_point now) {
  return std::chrono::duration<double>(now - t).count();
}

}  // namespace

// -- HttpServer --------------------------------------------------------------------------

HttpServer::HttpServer(std::shared_ptr<Router> router, int listen_fd, ServerOptions options)
    : router_(std::move(router)),
      options_(std::move(options)),
      state_(std::make_shared<ServerState>(options_.latency_bounds)),
      handoff_(options_.max_connections, options_.handoff_wait_s),
      listen_fd_(listen_fd),
      read_scratch_(kReadChunk) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  // accept4 until EAGAIN: a blocking listener would hold the loop on its last accept
  ::fcntl(listen_fd_, F_SETFL, ::fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerKey;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "epoll_ctl listener");
  ev.data.u64 = kWakeKey;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, state_->wake_fd(), &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "epoll_ctl wake");
  thread_ = std::thread([this] { run(); });
}

HttpServer::~HttpServer() {
  stop();
  ::close(epoll_fd_);
}

void HttpServer::set_handoff(int index, int fd) { handoff_.set_target(index, fd); }

void HttpServer::stop() {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options_.drain_s));
  std::call_once(stop_once_, [&] { drain_deadline_ = deadline; });
  if (!stopping_.exchange(true)) {
    state_->stopping.store(true);
    state_->wake();
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
  handoff_.stop(drain_deadline_);
}

ServerStats HttpServer::stats() const {
  ServerStats s;
  state_->fill(s);
  s.accepted = accepted_.load(std::memory_order_relaxed);
  s.connections = connections_.load(std::memory_order_relaxed);
  s.handed_off = handoff_.sent();
  s.handoff_failed = handoff_.failed();
  s.send_timeouts = send_timeouts_.load(std::memory_order_relaxed);
  return s;
}

void HttpServer::run() {
  state_->set_loop_thread(std::this_thread::get_id());
  epoll_event events[256];
  auto last_scan = Clock::now();
  bool work_left = false;  // deferred batches or answered connections the last turn did not get to
  // Asleep at most half the overload budget (50 ms at most), so that a wait that returns later
  // than that, past the budget, says requests may have waited that long in their sockets.
  const int sleep_ms = static_cast<int>(std::clamp(options_.overload_wait_ms / 2, 1.0, 50.0));
  while (true) {
    if (!draining_ && stopping_.load(std::memory_order_acquire)) begin_drain();
    if (draining_ && (conns_.empty() || Clock::now() >= drain_deadline_)) break;
    const auto asleep = Clock::now();
    const int timeout_ms = work_left ? 0 : sleep_ms;
    const int n = ::epoll_wait(epoll_fd_, events, 256, timeout_ms);
    turn_start_ = Clock::now();
    // A wait that returned late with nothing read (EINTR after a SIGCONT, or its timeout) leaves
    // what arrived meanwhile for the next turn: the lateness stays until a turn reads events.
    late_pending_s_ = std::max(late_pending_s_, seconds_since(asleep, turn_start_) - timeout_ms / 1e3);
    overslept_s_ = late_pending_s_;
    if (n > 0) late_pending_s_ = 0;
    int connection_events = 0;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == kListenerKey) {
        accept_all();
        continue;
      }
      if (key == kWakeKey) continue;  // the done queue is drained below
      auto it = conns_.find(static_cast<int64_t>(key));
      if (it == conns_.end()) continue;
      std::shared_ptr<Connection> conn = it->second;
      const uint32_t what = events[i].events;
      if ((what & EPOLLOUT) && conn->output_pending()) conn->flush();
      if (!draining_ && (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) read_from(*conn);
      advance(conn);
      // Many clients: what was read so far runs now, where it would wait for the rest of the
      // turn's reads (the answers go out as their batches finish, a turn sooner).
      if (++connection_events % kEventsPerEarlyRun == 0) run_deferred();
    }
    // The turn's requests for quick models run here, one batch per model; their answers (and
    // those other threads completed meanwhile) let each connection's next request go.
    // At most kRounds: a client pipelining many requests waits for the others' next turn.
    work_left = true;
    for (int round = 0; round < kRounds; ++round) {
      run_deferred();
      state_->answer_handed();
      auto done = state_->take_done();
      if (done.empty()) {
        work_left = false;
        break;
      }
      for (auto& conn : done) {
        conn->in_flight = false;
        if (!conn->registered) continue;
        if (conn->peer_closed || stopping_.load(std::memory_order_relaxed)) conn->keep_alive = false;
        conn->since = turn_start_;
        // What came meanwhile was read on its event, but for what a full buffer left in the socket.
        if (conn->read_capped && !draining_) read_from(*conn);
        advance(conn);
      }
    }
    const auto now = Clock::now();
    lag_s_ = seconds_since(turn_start_, now);
    if (now - last_scan >= kScanEvery) {
      // An answer flushed here lets its connection's next request start: it runs next turn.
      if (scan_timers()) work_left = true;
      last_scan = now;
    }
    table_.reset();  // no snapshot held while asleep: Router::wait_quiescent may return
  }
  run_deferred();  // what the last turn submitted to run here completes (its batcher waits for it)
  // Drained, or out of time: what is still open closes now (a request still in flight is
  // answered by nobody: its connection is shut, and the thread that completes it writes nothing).
  for (auto& [seq, conn] : conns_) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn->fd(), nullptr);
    conn->registered = false;
    conn->close_output();
    ::shutdown(conn->fd(), SHUT_RDWR);
  }
  conns_.clear();
  connections_.store(0);
  state_->loop_gone();
}

void HttpServer::begin_drain() {
  draining_ = true;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  ::close(listen_fd_);  // new connections are refused from now on
  listen_fd_ = -1;
  // Nothing more is read: a connection with nothing due closes now, one with an answer due
  // once it has gone (the answer says `connection: close`). A request still arriving has not
  // started: refused at once, as the Python path refuses it (server/limits.py).
  std::vector<std::shared_ptr<Connection>> idle;
  for (auto& [seq, conn] : conns_) {
    conn->keep_alive = false;
    if (conn->in_flight || conn->output_pending()) continue;
    if (conn->consumed < conn->in.size()) {
      std::string out;
      append_answer(out, 503, false, error_body("the server is shutting down; retry the request"));
      conn->write_answer(out);
      if (conn->output_pending()) continue;
    }
    idle.push_back(conn);
  }
  for (auto& conn : idle) close(conn);
}

void HttpServer::run_deferred() {
  for (const auto& b : deferred_) b->run_deferred();
  deferred_.clear();
}

void HttpServer::accept_all() {
  if (listen_fd_ < 0) return;  // draining
  for (int i = 0; i < kMaxAcceptsPerTurn; ++i) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or an error the next turn sees again
    accepted_.fetch_add(1, std::memory_order_relaxed);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto conn = std::make_shared<Connection>(fd, state_);
    conn->since = turn_start_;
    if (conns_.size() >= options_.max_connections) {  // the front end's limit answers it
      handoff_.send(conn->release_fd(), {});
      continue;
    }
    add(conn);
  }
}

void HttpServer::add(const std::shared_ptr<Connection>& conn) {
  conn->seq = next_seq_++;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = static_cast<uint64_t>(conn->seq);
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, conn->fd(), &ev) != 0) return;  // closed with `conn`
  conn->registered = true;
  conns_.emplace(conn->seq, conn);
  connections_.store(conns_.size(), std::memory_order_relaxed);
}

void HttpServer::read_from(Connection& conn) {
  if (conn.peer_closed) return;
  // Read ahead of a request in flight only a head's worth (pipelined requests wait in the
  // socket, as uvicorn pauses reading): 2048 connections may not pin a megabyte each.
  const size_t cap = conn.in_flight ? options_.max_head_bytes : options_.native_body_bytes + options_.max_head_bytes;
  conn.read_capped = false;
  while (true) {
    const size_t buffered = conn.in.size() - conn.consumed;
    if (buffered >= cap) {  // the rest waits in the socket (no new event comes for it)
      conn.read_capped = true;
      return;
    }
    // Into the loop's scratch, then appended: a connection's buffer holds what it was sent,
    // not a whole chunk's capacity each.
    const size_t want = std::min(read_scratch_.size(), cap - buffered);
    const ssize_t n = ::recv(conn.fd(), read_scratch_.data(), want, 0);
    if (n > 0) {
      if (buffered == 0) {
        conn.in.clear();
        conn.consumed = 0;
        conn.since = turn_start_;  // a new request starts arriving now
      }
      conn.in.append(read_scratch_.data(), static_cast<size_t>(n));
      if (static_cast<size_t>(n) < want) return;  // drained (edge-triggered: more data, a new event)
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    conn.peer_closed = true;  // end of stream, or an error
    return;
  }
}

void HttpServer::advance(const std::shared_ptr<Connection>& conn) {
  while (conn->registered && !conn->in_flight) {
    if (conn->output_pending()) return;  // the client does not read: its next request waits
    if (!conn->keep_alive) {  // its last answer has gone
      close(conn);
      return;
    }
    const char* data = conn->in.data() + conn->consumed;
    const size_t size = conn->in.size() - conn->consumed;
    if (size == 0) {
      // The buffer emptied on a request boundary while bytes stayed in the socket (it was full
      // when last read): edge-triggered epoll says nothing more about them, so read them now.
      if (conn->read_capped) {
        read_from(*conn);
        if (conn->in.size() > conn->consumed) continue;
      }
      if (conn->peer_closed) close(conn);
      return;
    }
    InferHead head;
    const HeadVerdict verdict = read_infer_head(data, size, head);
    if (verdict == HeadVerdict::kPartial) {
      if (conn->read_capped) {
        read_from(*conn);  // what stayed in the socket while the buffer was full
        if (conn->in.size() - conn->consumed > size) continue;
      }
      if (conn->peer_closed) close(conn);
      else if (size > options_.max_head_bytes) hand_off(conn);
      return;
    }
    if (verdict == HeadVerdict::kNotOurs || head.content_length > options_.native_body_bytes ||
        head.content_length > options_.max_body_bytes) {
      hand_off(conn);
      return;
    }
    const size_t whole = head.head_bytes + head.content_length;
    if (size < whole) {  // the body is still arriving
      if (conn->read_capped) {
        read_from(*conn);
        if (conn->in.size() - conn->consumed > size) continue;
      }
      if (conn->peer_closed) close(conn);
      return;
    }
    conn->fresh = false;
    const Served served = serve(conn, head, data + head.head_bytes);
    if (served == Served::kDeclined) {
      hand_off(conn);
      return;
    }
    conn->consumed += whole;
    if (conn->consumed > (64 << 10) && conn->consumed * 2 > conn->in.size()) {
      conn->in.erase(0, conn->consumed);
      conn->consumed = 0;
    }
    if (served == Served::kAnswered) conn->keep_alive = head.keep_alive;  // without: closed once written
  }
}

namespace {

// Whether `table` serves a loaded version of `model`.
bool serves(const RouteTable& table, std::string_view model) {
  const auto it = table.models.find(model);
  return it != table.models.end() && !it->second->loaded.empty();
}

}  // namespace

HttpServer::Served HttpServer::serve(const std::shared_ptr<Connection>& conn, const InferHead& head, const char* body) {
  const std::string_view model = head.model, version = head.version;
  const bool keep_alive = head.keep_alive;
  const bool raw = head.json_bytes == 0;  // Triton's raw binary form: the body is the one input
  if (raw && head.content_length == 0) return Served::kDeclined;
  // Overload (server/admission.py): refused from the head, its body never decoded; a model
  // not served is answered 404 instead (as in one process), and no name a client makes up is counted.
  // The model is looked up only once the loop counts itself overloaded (route_request looks it
  // up again for every request).
  if (!table_) table_ = router_->snapshot();
  if (connections_.load(std::memory_order_relaxed) >= options_.overload_min_connections &&
      std::max({lag_s_, overslept_s_, seconds_since(turn_start_, Clock::now())}) * 1e3 > options_.overload_wait_ms &&
      serves(*table_, model)) {
    state_->count_overload(std::string(model));
    answer_now(*conn, 429, error_body(options_.overload_message), keep_alive);
    return Served::kAnswered;
  }
  auto request = std::make_shared<DecodedInfer>();
  const size_t json_size = head.json_bytes < 0 ? head.content_length : static_cast<size_t>(head.json_bytes);
  if (raw) raw_input(body, head.content_length, *request);
  else if (!decode_infer(body, json_size, body + json_size, head.content_length - json_size, *request))
    return Served::kDeclined;
  std::vector<ipc::TensorIn> tensors;
  tensors.reserve(request->inputs.size());
  for (const DecodedInput& in : request->inputs)
    tensors.push_back({in.name, in.dtype, in.shape, in.data->data(), in.nbytes});
  try {
    Routed routed = route_request(*table_, model, version, request->routing_key, tensors, raw);
    const BatcherConfig& config = routed.answering->batcher->config();
    std::vector<ChosenOutput> chosen;
    if (request->outputs_given) {
      for (size_t k = 0; k < request->outputs.size(); ++k) {
        size_t i = 0;
        while (i < config.outputs.size() && config.outputs[i].name != request->outputs[k]) ++i;
        if (i == config.outputs.size()) return Served::kDeclined;  // the Python path's message
        const int8_t binary = request->outputs_binary[k];
        chosen.push_back({i, binary < 0 ? request->binary_default : binary == 1});
      }
    } else {
      for (size_t i = 0; i < config.outputs.size(); ++i) chosen.push_back({i, request->binary_default});
    }
    for (const ChosenOutput& o : chosen)
      if (!encodable(config.outputs[o.index].dtype)) return Served::kDeclined;
    for (InputView& v : routed.views)  // the batcher holds the decoded memory as long as it needs it
      for (const DecodedInput& in : request->inputs)
        if (in.data->data() == v.data) v.storage = in.data;
    auto pending = std::make_unique<Pending>();
    pending->conn = conn;
    pending->route = routed.answering;
    pending->request = request;
    pending->model = std::string(model);
    pending->chosen = std::move(chosen);
    pending->start = Clock::now();
    pending->keep_alive = keep_alive;
    if (routed.answering->feedback) {
      if (request->id.empty()) request->id = random_id();
      pending->inputs = routed.views;
    }
    for (const auto& s : routed.shadows) {
      auto copy = std::make_unique<Pending>();
      copy->conn = conn;
      copy->route = s;
      copy->request = request;
      copy->answers = false;
      if (submit_shadow(s->batcher, routed.views, reinterpret_cast<uint64_t>(copy.get()), conn, deferred_))
        copy.release();
    }
    conn->in_flight = true;
    conn->keep_alive = keep_alive;
    Batcher::Submitted r;
    try {
      r = submit_answering(*routed.answering->batcher, std::move(routed.views), reinterpret_cast<uint64_t>(pending.get()),
                           conn, request->priority, request->timeout_us);
    } catch (...) {
      conn->in_flight = false;
      throw;
    }
    pending.release();  // the completion owns it now
    if (r == Batcher::Submitted::kDeferred) deferred_.push_back(routed.answering->batcher);
    return Served::kSubmitted;
  } catch (const Refusal& r) {
    answer_now(*conn, r.status, error_body(r.message), keep_alive);
    return Served::kAnswered;
  }
}

void HttpServer::answer_now(Connection& conn, uint16_t status, std::string_view body, bool keep_alive) {
  std::string out;
  append_answer(out, status, keep_alive && !stopping_.load(std::memory_order_relaxed), body);
  state_->count_served();  // before the write: a client that has its answer finds it counted
  conn.write_answer(out);
}

void HttpServer::hand_off(const std::shared_ptr<Connection>& conn) {
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn->fd(), nullptr);
  std::string read_so_far = conn->in.substr(conn->consumed);
  conn->registered = false;
  conns_.erase(conn->seq);
  connections_.store(conns_.size(), std::memory_order_relaxed);
  handoff_.send(conn->release_fd(), std::move(read_so_far));
}

void HttpServer::close(const std::shared_ptr<Connection>& conn) {
  if (!conn->registered) return;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn->fd(), nullptr);
  conn->registered = false;
  conn->close_output();
  ::shutdown(conn->fd(), SHUT_RDWR);  // the descriptor itself closes with its last owner
  conns_.erase(conn->seq);
  connections_.store(conns_.size(), std::memory_order_relaxed);
}

bool HttpServer::scan_timers() {
  const auto now = Clock::now();
  const auto send_cutoff = now - std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(options_.send_timeout_s));
  std::vector<std::shared_ptr<Connection>> late, idle, stuck, flushed;
  for (auto& [seq, conn] : conns_) {
    if (conn->output_pending()) {
      // TCP says writable (EPOLLOUT) only once half its queue is free: a client reading slowly
      // through a small window frees less for a long time. What it took is made room for here.
      if (conn->flush()) flushed.push_back(conn);
      else if (conn->output_stalled_since(send_cutoff)) stuck.push_back(conn);  // it takes nothing
      continue;
    }
    if (conn->in_flight) continue;
    const double waited = seconds_since(conn->since, now);
    if (conn->consumed < conn->in.size() || conn->fresh) {
      // No whole request yet: slow, silent or hostile. Python's head and body timers take it.
      if (waited > options_.stall_s) late.push_back(conn);
    } else if (waited > options_.keep_alive_s) {
      idle.push_back(conn);
    }
  }
  for (auto& conn : late) {
    if (draining_) close(conn);
    else hand_off(conn);
  }
  for (auto& conn : idle) close(conn);
  for (auto& conn : stuck) close(conn);
  send_timeouts_.fetch_add(stuck.size(), std::memory_order_relaxed);
  for (auto& conn : flushed) advance(conn);  // its answer has gone: the next request, or the close
  return !flushed.empty();
}

}  // namespace loopserve::http
