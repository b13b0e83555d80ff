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
#include "picohttpparser.h"
#include "serving/dispatch.h"
#include "serving/feedback_tap.h"

namespace loopserve::http {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kListenerKey = 0;
constexpr uint64_t kWakeKey = 1;
constexpr size_t kMaxHeaders = 64;
constexpr size_t kReadChunk = 64 << 10;
constexpr int kMaxAcceptsPerTurn = 256;
constexpr auto kScanEvery = std::chrono::milliseconds(50);
constexpr int kRounds = 4;  // of deferred batches and answered connections per turn

double seconds_since(Clock::time_point t, Clock::time_point now) {
  return std::chrono::duration<double>(now - t).count();
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// A path segment the native path takes as a model name or version: printable ASCII with no
// %-escape, query or fragment (anything else goes to Python, which decodes as uvicorn does).
bool plain_segment(std::string_view s) {
  if (s.empty()) return false;
  for (char ch : s)
    if (ch <= 0x20 || ch >= 0x7f || ch == '%' || ch == '?' || ch == '#' || ch == '/') return false;
  return true;
}

// POST /v2/models/{m}[/versions/{v}]/infer
bool infer_path(std::string_view path, std::string_view* model, std::string_view* version) {
  constexpr std::string_view kPrefix = "/v2/models/", kInfer = "/infer", kVersions = "/versions/";
  if (path.size() <= kPrefix.size() + kInfer.size() || path.substr(0, kPrefix.size()) != kPrefix ||
      path.substr(path.size() - kInfer.size()) != kInfer)
    return false;
  std::string_view middle = path.substr(kPrefix.size(), path.size() - kPrefix.size() - kInfer.size());
  size_t slash = middle.find('/');
  if (slash == std::string_view::npos) {
    *model = middle;
    *version = {};
    return plain_segment(middle);
  }
  *model = middle.substr(0, slash);
  std::string_view rest = middle.substr(slash);
  if (rest.substr(0, kVersions.size()) != kVersions) return false;
  *version = rest.substr(kVersions.size());
  return plain_segment(*model) && plain_segment(*version);
}

// The infer request's parts, once the native path has said it takes it.
struct Pending {
  std::shared_ptr<Connection> conn;
  std::shared_ptr<const VersionRoute> route;
  std::shared_ptr<DecodedInfer> request;  // owns the inputs' memory, the id, the group
  std::string model;
  std::vector<InputView> inputs;  // kept only for feedback
  std::vector<size_t> chosen;     // the outputs to answer with, in order
  Clock::time_point start;
  bool answers = true;  // false: a shadow's copy
  bool keep_alive = true;
};

}  // namespace

// -- ServerState -------------------------------------------------------------------------

ServerState::ServerState(std::vector<double> latency_bounds) : bounds_(std::move(latency_bounds)) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

ServerState::~ServerState() { ::close(wake_fd_); }

void ServerState::complete(Connection& conn, Completion& c) {
  std::unique_ptr<Pending> p(reinterpret_cast<Pending*>(c.token));
  if (!p->answers) return;
  const VersionRoute& route = *p->route;
  std::string body;
  uint16_t status = 200;
  if (c.status == Status::kOk) {
    if (route.feedback) route.feedback->record(p->request->id, p->request->group, c, p->inputs);
    const auto& specs = route.batcher->config().outputs;
    std::vector<std::string_view> names;
    names.reserve(specs.size());
    for (const auto& s : specs) names.emplace_back(s.name);
    if (!encode_answer(body, p->model, route.version, p->request->id, c, names, p->chosen)) {
      status = 500;
      body = error_body("the model's answer could not be encoded");
    }
  } else {
    status = http_status(c.status);
    body = error_body(c.error ? *c.error : "");
  }
  std::string out;
  out.reserve(body.size() + 160);
  append_answer(out, status, p->keep_alive && !stopping.load(std::memory_order_relaxed), body);
  conn.write_answer(out);
  served_.fetch_add(1, std::memory_order_relaxed);
  if (status == 200) observe(p->model, route.version, seconds_since(p->start, Clock::now()));
  post_done(std::move(p->conn));
}

void ServerState::post_done(std::shared_ptr<Connection> conn) {
  if (stopping.load()) {  // the loop is gone: the answer (with `connection: close`) was the last
    ::shutdown(conn->fd(), SHUT_RDWR);
    return;
  }
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    done_.push_back(std::move(conn));
    // The loop drains after running its own batches: only another thread wakes it.
    if (!signalled_ && std::this_thread::get_id() != loop_thread_) wake = signalled_ = true;
  }
  if (wake) {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
  }
}

std::vector<std::shared_ptr<Connection>> ServerState::take_done() {
  std::vector<std::shared_ptr<Connection>> out;
  std::lock_guard<std::mutex> lock(done_mu_);
  out.swap(done_);
  if (signalled_) {
    uint64_t value;
    ssize_t n = ::read(wake_fd_, &value, sizeof value);
    (void)n;
    signalled_ = false;
  }
  return out;
}

void ServerState::count_overload(const std::string& model) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++overload_[model];
}

void ServerState::observe(const std::string& model, int64_t version, double seconds) {
  const size_t bucket = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin());
  std::lock_guard<std::mutex> lock(stats_mu_);
  LatencyCounts& h = latency_[{model, version}];
  if (h.counts.empty()) h.counts.assign(bounds_.size() + 1, 0);
  ++h.counts[bucket];
  h.sum += seconds;
}

void ServerState::fill(ServerStats& s) const {
  s.served = served_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(stats_mu_);
  s.overload_refused = overload_;
  s.latency = latency_;
}

// -- HttpServer --------------------------------------------------------------------------

HttpServer::HttpServer(std::shared_ptr<Router> router, int listen_fd, ServerOptions options)
    : router_(std::move(router)),
      options_(std::move(options)),
      state_(std::make_shared<ServerState>(options_.latency_bounds)),
      listen_fd_(listen_fd) {
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
  if (!stopping_.exchange(true)) {
    state_->stopping.store(true);
    uint64_t one = 1;
    ssize_t n = ::write(state_->wake_fd(), &one, sizeof one);
    (void)n;
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
  handoff_.stop();
}

ServerStats HttpServer::stats() const {
  ServerStats s;
  state_->fill(s);
  s.accepted = accepted_.load(std::memory_order_relaxed);
  s.connections = connections_.load(std::memory_order_relaxed);
  s.handed_off = handoff_.sent();
  s.handoff_failed = handoff_.failed();
  return s;
}

void HttpServer::run() {
  state_->set_loop_thread(std::this_thread::get_id());
  epoll_event events[256];
  auto last_scan = Clock::now();
  bool work_left = false;  // deferred batches or answered connections the last turn did not get to
  while (!stopping_.load(std::memory_order_relaxed)) {
    const int n = ::epoll_wait(epoll_fd_, events, 256, work_left ? 0 : 50);
    turn_start_ = Clock::now();
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
      if (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_from(*conn);
      advance(conn);
    }
    // The turn's requests for quick models run here, one batch per model; their answers (and
    // those other threads completed meanwhile) let each connection's next request go.
    // At most kRounds: a client pipelining many requests waits for the others' next turn.
    work_left = true;
    for (int round = 0; round < kRounds; ++round) {
      for (const auto& b : deferred_) b->run_deferred();
      deferred_.clear();
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
        read_from(*conn);  // what came while the request ran and was not read
        advance(conn);
      }
    }
    table_.reset();  // no snapshot held while asleep: Router::wait_quiescent may return
    const auto now = Clock::now();
    lag_s_ = seconds_since(turn_start_, now);
    if (now - last_scan >= kScanEvery) {
      scan_timers();
      last_scan = now;
    }
  }
  // Stopping: a connection with no request in flight closes now; one in flight when its
  // answer has gone (its request holds it).
  for (auto& [seq, conn] : conns_) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn->fd(), nullptr);
    conn->registered = false;
    if (!conn->in_flight) ::shutdown(conn->fd(), SHUT_RDWR);
  }
  conns_.clear();
  connections_.store(0);
}

void HttpServer::accept_all() {
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
  const size_t cap = options_.native_body_bytes + options_.max_head_bytes;
  conn.read_capped = false;
  while (true) {
    if (conn.in.size() - conn.consumed >= cap) {  // the rest waits in the socket (no new event comes for it)
      conn.read_capped = true;
      return;
    }
    const bool was_empty = conn.consumed == conn.in.size();
    if (was_empty) {
      conn.in.clear();
      conn.consumed = 0;
    }
    const size_t before = conn.in.size();
    conn.in.resize(before + kReadChunk);
    const ssize_t n = ::recv(conn.fd(), conn.in.data() + before, kReadChunk, 0);
    conn.in.resize(before + (n > 0 ? static_cast<size_t>(n) : 0));
    if (n > 0) {
      if (was_empty) conn.since = turn_start_;  // a new request starts arriving now
      if (static_cast<size_t>(n) < kReadChunk) return;  // drained (edge-triggered: more data, a new event)
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
      if (conn->peer_closed) close(conn);
      return;
    }
    const char *method, *path;
    size_t method_len, path_len, num_headers = kMaxHeaders;
    int minor = 0;
    phr_header headers[kMaxHeaders];
    const int head = phr_parse_request(data, size, &method, &method_len, &path, &path_len, &minor, headers,
                                       &num_headers, 0);
    if (head == -2) {  // partial head
      if (conn->read_capped) {
        read_from(*conn);  // what stayed in the socket while the buffer was full
        if (conn->in.size() - conn->consumed > size) continue;
      }
      if (conn->peer_closed) close(conn);
      else if (size > options_.max_head_bytes) hand_off(conn);
      return;
    }
    std::string_view model, version;
    bool keep_alive = true;
    bool ours = head > 0 && minor == 1 && std::string_view(method, method_len) == "POST" &&
                infer_path({path, path_len}, &model, &version);
    int64_t content_length = -1;
    for (size_t i = 0; ours && i < num_headers; ++i) {
      const std::string_view name(headers[i].name, headers[i].name_len);
      const std::string_view value(headers[i].value, headers[i].value_len);
      if (headers[i].name == nullptr) {
        ours = false;  // a folded header line
      } else if (iequals(name, "content-length")) {
        if (content_length >= 0 || value.empty() || value.size() > 18) ours = false;
        int64_t v = 0;
        for (char ch : value) {
          if (ch < '0' || ch > '9') ours = false;
          v = v * 10 + (ch - '0');
        }
        content_length = v;
      } else if (iequals(name, "connection")) {
        if (iequals(value, "close")) keep_alive = false;
        else if (!iequals(value, "keep-alive")) ours = false;
      } else if (iequals(name, "transfer-encoding") || iequals(name, "expect") || iequals(name, "upgrade") ||
                 iequals(name, "inference-header-content-length")) {
        ours = false;  // chunked bodies, 100-continue, upgrades, binary tensors: the Python path's
      }
    }
    if (!ours || content_length < 0 || static_cast<size_t>(content_length) > options_.native_body_bytes ||
        static_cast<size_t>(content_length) > options_.max_body_bytes) {
      hand_off(conn);
      return;
    }
    const size_t whole = static_cast<size_t>(head) + static_cast<size_t>(content_length);
    if (size < whole) {  // the body is still arriving
      if (conn->read_capped) {
        read_from(*conn);
        if (conn->in.size() - conn->consumed > size) continue;
      }
      if (conn->peer_closed) close(conn);
      return;
    }
    conn->fresh = false;
    const Served served = serve(conn, model, version, data + head, static_cast<size_t>(content_length), keep_alive);
    if (served == Served::kDeclined) {
      hand_off(conn);
      return;
    }
    conn->consumed += whole;
    if (conn->consumed > (64 << 10) && conn->consumed * 2 > conn->in.size()) {
      conn->in.erase(0, conn->consumed);
      conn->consumed = 0;
    }
    if (served == Served::kAnswered) conn->keep_alive = keep_alive;  // without: closed once written
  }
}

HttpServer::Served HttpServer::serve(const std::shared_ptr<Connection>& conn, std::string_view model,
                                     std::string_view version, const char* body, size_t size, bool keep_alive) {
  // Overload (server/admission.py): refused from the head, its body never decoded.
  if (connections_.load(std::memory_order_relaxed) >= options_.overload_min_connections &&
      std::max(lag_s_, seconds_since(turn_start_, Clock::now())) * 1e3 > options_.overload_wait_ms) {
    state_->count_overload(std::string(model));
    answer_now(*conn, 429, error_body(options_.overload_message), keep_alive);
    return Served::kAnswered;
  }
  auto request = std::make_shared<DecodedInfer>();
  if (!decode_infer(body, size, *request)) return Served::kDeclined;
  std::vector<ipc::TensorIn> tensors;
  tensors.reserve(request->inputs.size());
  for (const DecodedInput& in : request->inputs)
    tensors.push_back({in.name, in.dtype, in.shape, in.data->data(), in.nbytes});
  if (!table_) table_ = router_->snapshot();
  try {
    Routed routed = route_request(*table_, model, version, request->routing_key, tensors, false);
    const BatcherConfig& config = routed.answering->batcher->config();
    std::vector<size_t> chosen;
    if (request->outputs_given) {
      for (const std::string& name : request->outputs) {
        size_t i = 0;
        while (i < config.outputs.size() && config.outputs[i].name != name) ++i;
        if (i == config.outputs.size()) return Served::kDeclined;  // the Python path's message
        chosen.push_back(i);
      }
    } else {
      for (size_t i = 0; i < config.outputs.size(); ++i) chosen.push_back(i);
    }
    for (size_t i : chosen)
      if (!encodable(config.outputs[i].dtype)) return Served::kDeclined;
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
  conn.write_answer(out);
  state_->count_served();
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

void HttpServer::scan_timers() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Connection>> late, idle;
  for (auto& [seq, conn] : conns_) {
    if (conn->in_flight || conn->output_pending()) continue;
    const double waited = seconds_since(conn->since, now);
    if (conn->consumed < conn->in.size() || conn->fresh) {
      // No whole request yet: slow, silent or hostile. Python's head and body timers take it.
      if (waited > options_.stall_s) late.push_back(conn);
    } else if (waited > options_.keep_alive_s) {
      idle.push_back(conn);
    }
  }
  for (auto& conn : late) hand_off(conn);
  for (auto& conn : idle) close(conn);
}

}  // namespace loopserve::http
