#include "http/handoff.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

namespace loopserve::http {

Handoff::Handoff() : thread_([this] { run(); }) {}

Handoff::~Handoff() {
  stop();
  for (auto& [index, fd] : targets_) ::close(fd);
  for (auto& [fd, bytes] : queue_) ::close(fd);
}

void Handoff::set_target(int index, int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = targets_.find(index);
  if (it != targets_.end()) ::close(it->second);
  targets_[index] = fd;
  cv_.notify_one();
}

void Handoff::send(int fd, std::string read_so_far) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) {
    ::close(fd);
    return;
  }
  queue_.emplace_back(fd, std::move(read_so_far));
  cv_.notify_one();
}

void Handoff::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

uint64_t Handoff::sent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sent_;
}

uint64_t Handoff::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void Handoff::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to hand over
    auto [fd, bytes] = std::move(queue_.front());
    queue_.pop_front();
    bool done = false;
    // At start-up the front ends may not be there yet: wait a moment for one.
    cv_.wait_for(lock, std::chrono::seconds(10), [this] { return stopping_ || !targets_.empty(); });
    // Front ends take turns; one whose socket fails is dropped and the next is tried.
    while (!done && !targets_.empty()) {
      auto it = targets_.lower_bound(next_);
      if (it == targets_.end()) it = targets_.begin();
      const int index = it->first, target = it->second;
      next_ = index + 1;
      lock.unlock();
      done = send_to(target, fd, bytes);
      lock.lock();
      if (!done) {
        auto again = targets_.find(index);
        if (again != targets_.end() && again->second == target) {
          ::close(target);
          targets_.erase(again);
        }
      }
    }
    ++(done ? sent_ : failed_);
    ::close(fd);  // the front end holds its own copy now (or nobody could take it)
  }
}

bool Handoff::send_to(int target, int fd, const std::string& bytes) {
  char head[8] = {'L', 'S', 'H', '1'};
  const uint32_t len = static_cast<uint32_t>(bytes.size());
  for (int i = 0; i < 4; ++i) head[4 + i] = static_cast<char>((len >> (8 * i)) & 0xff);
  size_t at = 0;  // bytes of the frame sent so far
  const size_t total = sizeof head + bytes.size();
  while (at < total) {
    iovec iov[2];
    int n_iov = 0;
    if (at < sizeof head) iov[n_iov++] = {head + at, sizeof head - at};
    const size_t body_at = at < sizeof head ? 0 : at - sizeof head;
    if (body_at < bytes.size()) iov[n_iov++] = {const_cast<char*>(bytes.data()) + body_at, bytes.size() - body_at};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (at == 0) {  // the descriptor rides with the first byte
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n = ::sendmsg(target, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (at == 0) return false;
      // Part of a frame went: the stream cannot be resynchronised, so this front end is done.
      return false;
    }
    at += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace loopserve::http
