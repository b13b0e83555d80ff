#include "completion.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace loopserve {

CompletionQueue::CompletionQueue() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

CompletionQueue::~CompletionQueue() { ::close(fd_); }

void CompletionQueue::deliver(std::vector<Completion>&& items) {
  std::lock_guard<std::mutex> lock(mu_);
  if (items_.empty()) {
    items_ = std::move(items);
  } else {
    items_.insert(items_.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
  }
  // Written under the lock, so that signalled_ always says whether the eventfd is readable.
  if (!signalled_ && !quiet_) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
    signalled_ = true;
  }
}

std::vector<Completion> CompletionQueue::drain() {
  std::vector<Completion> out;
  std::lock_guard<std::mutex> lock(mu_);
  if (signalled_) {
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(fd_, &count, sizeof count);
    signalled_ = false;
  }
  out.swap(items_);
  return out;
}

void CompletionQueue::set_quiet(bool quiet, bool signal_pending) {
  std::lock_guard<std::mutex> lock(mu_);
  quiet_ = quiet;
  if (!quiet && signal_pending && !items_.empty() && !signalled_) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
    signalled_ = true;
  }
}

void WaitSink::deliver(std::vector<Completion>&& items) {
  std::lock_guard<std::mutex> lock(mu_);
  item_ = std::move(items.front());
  done_ = true;
  cv_.notify_one();
}

Completion WaitSink::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return done_; });
  return std::move(item_);
}

}  // namespace loopserve
