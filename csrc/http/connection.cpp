#include "http/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "http/server.h"

namespace loopserve::http {

Connection::Connection(int fd, std::shared_ptr<ServerState> state) : fd_(fd), state_(std::move(state)) {}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
}

int Connection::release_fd() {
  std::lock_guard<std::mutex> lock(out_mu_);
  int fd = fd_;
  fd_ = -1;
  closed_ = true;
  return fd;
}

bool Connection::write_answer(std::string_view bytes) {
  std::lock_guard<std::mutex> lock(out_mu_);
  if (closed_) return false;
  if (out_at_ < out_.size()) {  // an earlier answer is still going out: this one follows it
    out_.append(bytes);
    return true;
  }
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
    if (n > 0) {
      at += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      out_.assign(bytes.substr(at));  // the client does not read now: the loop writes the rest
      out_at_ = 0;
      out_progress_ = Clock::now();
      return true;
    } else {
      closed_ = true;
      return false;
    }
  }
  return true;
}

bool Connection::flush() {
  std::lock_guard<std::mutex> lock(out_mu_);
  const size_t before = out_at_;
  while (out_at_ < out_.size() && !closed_) {
    ssize_t n = ::send(fd_, out_.data() + out_at_, out_.size() - out_at_, MSG_NOSIGNAL);
    if (n > 0) {
      out_at_ += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (out_at_ > before) out_progress_ = Clock::now();
      return false;
    } else {
      closed_ = true;
    }
  }
  out_.clear();
  out_at_ = 0;
  return true;
}

bool Connection::output_pending() {
  std::lock_guard<std::mutex> lock(out_mu_);
  return out_at_ < out_.size() && !closed_;
}

bool Connection::output_stalled_since(Clock::time_point since) {
  std::lock_guard<std::mutex> lock(out_mu_);
  return out_at_ < out_.size() && !closed_ && out_progress_ < since;
}

void Connection::close_output() {
  std::lock_guard<std::mutex> lock(out_mu_);
  closed_ = true;
}

void Connection::deliver(std::vector<Completion>&& items) {
  for (Completion& c : items) state_->complete(*this, c);
}

}  // namespace loopserve::http
