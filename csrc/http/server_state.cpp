#include "http/server_state.h"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <thread>

#include "http/connection.h"
#include "http/response.h"
#include "serving/dispatch.h"
#include "serving/feedback_tap.h"

namespace loopserve::http {

using Clock = std::chrono::steady_clock;

ServerState::ServerState(std::vector<double> latency_bounds) : bounds_(std::move(latency_bounds)) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

ServerState::~ServerState() { ::close(wake_fd_); }

void ServerState::complete(Connection& conn, Completion& c) {
  if (std::this_thread::get_id() != loop_thread_ && hand_to_loop(conn, c)) return;
  answer(conn, c);
}

// A model's worker thread that encodes and writes its batch's answers (64 of them: about half a
// millisecond) leaves the model idle meanwhile: the heavy MLP at 128 clients ran at 0.81 of what
// it does alone. When a whole batch already waits for the model, the model is what everyone
// waits for (and the loop, which only reads requests as fast as the model takes them, has
// room): the loop writes the answers and the worker goes on to that batch. Otherwise the worker
// writes them itself: its model would wait for more requests anyway, and a busy loop (a fast
// model, many clients) keeps the writes off its one thread.
bool ServerState::hand_to_loop(Connection& conn, Completion& c) {
  const Pending* p = reinterpret_cast<const Pending*>(c.token);
  if (!p->answers || !p->route->batcher->full_batch_waiting()) return false;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    if (loop_gone_) return false;
    handed_.emplace_back(conn.shared_from_this(), std::move(c));
    answers_by_loop_.fetch_add(1, std::memory_order_relaxed);
    signal_locked();
  }
  return true;
}

void ServerState::answer_handed() {
  std::vector<std::pair<std::shared_ptr<Connection>, Completion>> handed;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    handed.swap(handed_);
  }
  for (auto& [conn, c] : handed) answer(*conn, c);
}

void ServerState::answer(Connection& conn, Completion& c) {
  std::unique_ptr<Pending> p(reinterpret_cast<Pending*>(c.token));
  if (!p->answers) return;
  const VersionRoute& route = *p->route;
  std::string body;
  int64_t json_length = -1;
  uint16_t status = 200;
  if (c.status == Status::kOk) {
    if (route.feedback) route.feedback->record(p->request->id, p->request->group, c, p->inputs);
    const auto& specs = route.batcher->config().outputs;
    std::vector<std::string_view> names;
    names.reserve(specs.size());
    for (const auto& s : specs) names.emplace_back(s.name);
    if (!encode_answer(body, &json_length, p->model, route.version, p->request->id, c, names, p->chosen)) {
      json_length = -1;
      status = 500;
      body = error_body("the model's answer could not be encoded");
    }
  } else {
    status = http_status(c.status);
    body = error_body(c.error ? *c.error : "");
  }
  std::string out;
  out.reserve(body.size() + 160);
  append_answer(out, status, p->keep_alive && !stopping.load(std::memory_order_relaxed), body, json_length);
  // Counted before the write: a client that has its answer finds it counted.
  served_.fetch_add(1, std::memory_order_relaxed);
  if (status == 200) observe(p->model, route.version, std::chrono::duration<double>(Clock::now() - p->start).count());
  conn.write_answer(out);
  post_done(std::move(p->conn));
}

void ServerState::post_done(std::shared_ptr<Connection> conn) {
  std::lock_guard<std::mutex> lock(done_mu_);
  if (loop_gone_) {  // nobody flushes or reads it any more: what went out was the last
    ::shutdown(conn->fd(), SHUT_RDWR);
    return;
  }
  done_.push_back(std::move(conn));
  // The loop drains after running its own batches: only another thread wakes it.
  if (std::this_thread::get_id() != loop_thread_) signal_locked();
}

void ServerState::wake() {
  std::lock_guard<std::mutex> lock(done_mu_);
  signal_locked();
}

// Written under done_mu_, so that signalled_ always says whether the eventfd is readable: a
// write after the lock could land after take_done found nothing to read and cleared
// signalled_, leaving the (level-triggered) eventfd readable with nobody to read it, and the
// loop spinning.
void ServerState::signal_locked() {
  if (signalled_) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
  signalled_ = true;
}

std::vector<std::shared_ptr<Connection>> ServerState::take_done() {
  std::vector<std::shared_ptr<Connection>> out;
  std::lock_guard<std::mutex> lock(done_mu_);
  out.swap(done_);
  // Completions handed meanwhile keep the wake-up (level-triggered): the next turn answers them.
  if (signalled_ && handed_.empty()) {
    uint64_t value;
    ssize_t n = ::read(wake_fd_, &value, sizeof value);
    (void)n;
    signalled_ = false;
  }
  return out;
}

void ServerState::loop_gone() {
  std::vector<std::shared_ptr<Connection>> left;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    loop_gone_ = true;
    left.swap(done_);
  }
  for (auto& conn : left) ::shutdown(conn->fd(), SHUT_RDWR);
  answer_handed();  // handed to the loop as it stopped: answered here, then shut (post_done)
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
  s.answers_by_loop = answers_by_loop_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(stats_mu_);
  s.overload_refused = overload_;
  s.latency = latency_;
}

}  // namespace loopserve::http
