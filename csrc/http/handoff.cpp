#include "http/handoff.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "http/infer_codec.h"
#include "http/response.h"

namespace loopserve::http {

namespace {

constexpr uint64_t kWakeKey = 0;
// While connections wait here, how often the front ends' unread bytes are looked at again
// (a front end that reads a little of a full socket raises no EPOLLOUT).
constexpr int kRecheckMs = 10;

}  // namespace

Handoff::Handoff(size_t max_queued, double max_wait_s)
    : max_queued_(max_queued),
      max_wait_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(max_wait_s))) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "handoff epoll");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "handoff epoll_ctl");
  thread_ = std::thread([this] { run(); });
}

Handoff::~Handoff() {
  stop(Clock::now());
  for (auto& [key, target] : targets_) ::close(target.fd);
  for (auto& [index, fd] : new_targets_) ::close(fd);
  ::close(epoll_fd_);
  ::close(wake_fd_);
}

void Handoff::set_target(int index, int fd) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    new_targets_.emplace_back(index, fd);
  }
  wake();
}

void Handoff::send(int fd, std::string read_so_far) {
  Frame frame;
  frame.fd = fd;
  std::memcpy(frame.head, "LSH1", 4);
  const uint32_t len = static_cast<uint32_t>(read_so_far.size());
  for (int i = 0; i < 4; ++i) frame.head[4 + i] = static_cast<char>((len >> (8 * i)) & 0xff);
  frame.bytes = std::move(read_so_far);
  frame.queued = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      new_frames_.push_back(std::move(frame));
      frame.fd = -1;
    }
  }
  if (frame.fd >= 0) refuse(frame, "the server is shutting down; retry the request");
  else wake();
}

void Handoff::stop(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      deadline_ = deadline;
    }
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void Handoff::wake() {
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd_, &one, sizeof one);
  (void)n;
}

void Handoff::run() {
  epoll_event events[64];
  bool stopping = false;
  Clock::time_point deadline;
  while (true) {
    bool partials = false;
    for (auto& [key, target] : targets_) partials |= target.has_partial;
    int timeout_ms = queue_.empty() && !partials ? -1 : kRecheckMs;
    if (stopping) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, kRecheckMs));
    }
    const int n = ::epoll_wait(epoll_fd_, events, 64, timeout_ms);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kWakeKey) {
        uint64_t value;
        ssize_t r = ::read(wake_fd_, &value, sizeof value);
        (void)r;
      } else {
        on_event(events[i].data.u64, events[i].events);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping = stopping_;
      deadline = deadline_;
    }
    take_work();
    pump();
    const auto now = Clock::now();
    expire(now);
    partials = false;
    for (auto& [key, target] : targets_) partials |= target.has_partial;
    if (stopping && ((queue_.empty() && !partials) || now >= deadline)) break;
  }
  // What could not be handed over in time: answered, never dropped in silence.
  while (!queue_.empty()) {
    refuse(queue_.front(), "the server is shutting down; retry the request");
    queue_.pop_front();
  }
  for (auto& [key, target] : targets_)
    if (target.has_partial) {
      refuse(target.partial, "the server is shutting down; retry the request");
      target.has_partial = false;
    }
}

void Handoff::take_work() {
  std::vector<std::pair<int, int>> targets;
  std::vector<Frame> frames;
  {
    std::lock_guard<std::mutex> lock(mu_);
    targets.swap(new_targets_);
    frames.swap(new_frames_);
  }
  for (auto [index, fd] : targets) {
    for (auto it = targets_.begin(); it != targets_.end(); ++it)
      if (it->second.index == index) {
        drop(it->first);
        break;
      }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    const uint64_t key = next_key_++;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLRDHUP | EPOLLET;  // writable again, or read from; or gone
    ev.data.u64 = key;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      continue;
    }
    Target& t = targets_[key];
    t.index = index;
    t.fd = fd;
  }
  for (Frame& f : frames) {
    queued_bytes_ += f.size();
    queue_.push_back(std::move(f));
  }
}

void Handoff::on_event(uint64_t key, uint32_t events) {
  auto it = targets_.find(key);
  if (it == targets_.end()) return;
  if (events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {  // the front end is gone
    drop(key);
    return;
  }
  if (events & EPOLLOUT) {
    it->second.writable = true;
    observe(it->second, Clock::now());
  }
}

void Handoff::observe(Target& target, Clock::time_point now) {
  int unread = 0;
  if (::ioctl(target.fd, SIOCOUTQ, &unread) != 0) return;
  if (unread < target.unread) target.last_read = now;
  target.unread = unread;
}

Handoff::Target* Handoff::choose(Clock::time_point now) {
  // In turn, the first that has read everything sent to it; else the one that read most
  // recently, unless that was kStalledAfter ago or more or it has kMaxUnreadBytes unread (then
  // the connection waits here).
  std::vector<Target*> order;
  for (auto& [key, t] : targets_)
    if (t.writable && !t.has_partial) order.push_back(&t);
  std::sort(order.begin(), order.end(), [this](const Target* a, const Target* b) {
    return std::make_pair(a->index < next_index_, a->index) < std::make_pair(b->index < next_index_, b->index);
  });
  Target* best = nullptr;
  for (Target* t : order) {
    observe(*t, now);
    if (t->unread == 0) return t;
    if (t->unread < kMaxUnreadBytes && now - t->last_read < kStalledAfter &&
        (best == nullptr || t->last_read > best->last_read))
      best = t;
  }
  return best;
}

void Handoff::pump() {
  const auto now = Clock::now();
  std::vector<uint64_t> failed;
  for (auto& [key, t] : targets_) {
    if (!t.has_partial || !t.writable) continue;
    const Sent r = send_frame(t, t.partial);
    if (r == Sent::kWhole) {
      ::close(t.partial.fd);
      sent_.fetch_add(1, std::memory_order_relaxed);
      t.has_partial = false;
    } else if (r == Sent::kFailed) {
      failed.push_back(key);
    } else {
      t.writable = false;
    }
  }
  for (uint64_t key : failed) drop(key);
  while (!queue_.empty()) {
    Target* t = choose(now);
    if (t == nullptr) break;
    Frame& f = queue_.front();
    const Sent r = send_frame(*t, f);
    if (r == Sent::kFull) {
      t->writable = false;
      continue;
    }
    if (r == Sent::kFailed) {
      for (auto& [key, target] : targets_)
        if (&target == t) {
          drop(key);
          break;
        }
      continue;
    }
    next_index_ = t->index + 1;
    queued_bytes_ -= f.size();
    if (r == Sent::kWhole) {
      ::close(f.fd);  // the front end holds its own copy now
      sent_.fetch_add(1, std::memory_order_relaxed);
    } else {  // the rest follows when the socket is writable again
      t->partial = std::move(f);
      t->has_partial = true;
      t->writable = false;
    }
    queue_.pop_front();
    observe(*t, now);
  }
}

Handoff::Sent Handoff::send_frame(Target& target, Frame& frame) {
  const size_t total = frame.size();
  const size_t before = frame.at;
  while (frame.at < total) {
    iovec iov[2];
    int n_iov = 0;
    if (frame.at < sizeof frame.head) iov[n_iov++] = {frame.head + frame.at, sizeof frame.head - frame.at};
    const size_t body_at = frame.at < sizeof frame.head ? 0 : frame.at - sizeof frame.head;
    if (body_at < frame.bytes.size())
      iov[n_iov++] = {const_cast<char*>(frame.bytes.data()) + body_at, frame.bytes.size() - body_at};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (frame.at == 0) {  // the descriptor rides with the first byte
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &frame.fd, sizeof(int));
    }
    const ssize_t n = ::sendmsg(target.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      frame.at += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    // Full; or too many descriptors in flight for this user (not the front end's fault).
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETOOMANYREFS)
      return frame.at == before && before == 0 ? Sent::kFull : Sent::kPart;
    return Sent::kFailed;
  }
  return Sent::kWhole;
}

void Handoff::drop(uint64_t key) {
  auto it = targets_.find(key);
  if (it == targets_.end()) return;
  Target& t = it->second;
  // A frame begun on it cannot go elsewhere (the stream would be out of step): its client
  // is answered, since the front end that had its first bytes is gone.
  if (t.has_partial) refuse(t.partial, "the server's front end went away; retry the request");
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, t.fd, nullptr);
  ::close(t.fd);
  targets_.erase(it);
}

void Handoff::expire(Clock::time_point now) {
  // Past the wait or the bounds: the newest are refused first, the oldest once they waited too long.
  while (!queue_.empty() && now - queue_.front().queued > max_wait_) {
    refuse(queue_.front(), "no front end took the connection in time; retry the request");
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
  }
  while (!queue_.empty() && (queue_.size() > max_queued_ || queued_bytes_ > kMaxQueuedBytes)) {
    refuse(queue_.back(), "the server's front ends are not taking connections now; retry later");
    queued_bytes_ -= queue_.back().size();
    queue_.pop_back();
  }
}

void Handoff::refuse(Frame& frame, const char* message) {
  // What the client sent and nobody will read goes first: a close with unread input resets
  // the connection, and the client could lose the answer.
  char sink[16 << 10];
  for (int i = 0; i < 64 && ::recv(frame.fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
  }
  std::string out;
  append_answer(out, 503, false, error_body(message));
  ssize_t n = ::send(frame.fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  ::shutdown(frame.fd, SHUT_WR);
  ::close(frame.fd);
  frame.fd = -1;
  failed_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace loopserve::http
