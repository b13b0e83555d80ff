// Hands a client connection to a Python front end: its descriptor goes over a Unix socket
// (SCM_RIGHTS) with the bytes already read from it, and from then on the connection is the
// front end's (python/loopserve/server/handoff.py adopts it into uvicorn). This is how the
// native HTTP path leaves to Python every request it does not take, with every route,
// error message and limit exactly as Python has them.
//
// Frame on the socket: 4 bytes "LSH1", a 4-byte little-endian length, then that many bytes
// (what was read); the descriptor rides with the frame's first byte.
//
// A thread of its own sends, on non-blocking sockets, so that no front end can hold up the
// others (or the server's loop): a connection goes to a front end that has read everything
// sent to it (in turn), else to the one that read most recently, but never to one with bytes
// unread that has read nothing for `kStalledAfter` (stopped, its loop busy, or just not seen
// reading yet), nor to one with `kMaxUnreadBytes` unread (about four small frames): a front end
// that stops holds at most the few connections it was sent while it looked well.
// When none can take it now, it waits here, in one queue any front end takes from as soon as it can
// (bounded: past `max_queued` connections or `kMaxQueuedBytes`, or after `max_wait_s`, the
// client is answered 503 and the connection closed, counted as failed). A front end whose
// socket fails is dropped; the one set in its place (same index) takes its turn.
//
// Thread-safety: every public member may be called from any thread. The sending thread alone
// touches the front ends' sockets and the queue; callers hand it work under mu_.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace loopserve::http {

class Handoff {
 public:
  using Clock = std::chrono::steady_clock;

  static constexpr size_t kMaxQueuedBytes = size_t{64} << 20;
  static constexpr auto kStalledAfter = std::chrono::milliseconds(50);
  static constexpr int kMaxUnreadBytes = 3 << 10;  // as SIOCOUTQ counts them (a small frame: ~768)

  Handoff(size_t max_queued, double max_wait_s);
  ~Handoff();
  Handoff(const Handoff&) = delete;
  Handoff& operator=(const Handoff&) = delete;

  // The socket of front end `index` (replacing an earlier one, which is closed); takes `fd`.
  void set_target(int index, int fd);
  // Hands `fd` (taken) over with the bytes read from it so far.
  void send(int fd, std::string read_so_far);
  // Takes no more; hands over what waits until `deadline`, then answers the rest 503.
  void stop(Clock::time_point deadline);
  uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  struct Frame {
    int fd = -1;  // the client's; ours until the whole frame has gone
    char head[8];
    std::string bytes;
    size_t at = 0;  // of head and bytes, sent so far
    Clock::time_point queued;
    size_t size() const { return sizeof head + bytes.size(); }
  };
  struct Target {
    int index = 0;
    int fd = -1;
    bool writable = true;  // until a send says EAGAIN; again on EPOLLOUT
    bool has_partial = false;
    Frame partial;  // a frame begun on this socket: only its rest may follow
    int unread = 0;  // bytes the front end has not read (SIOCOUTQ), as last seen
    Clock::time_point last_read;  // when it was last seen reading (fewer bytes unread)
  };
  enum class Sent { kWhole, kPart, kFull, kFailed };

  void run();
  void take_work();
  void on_event(uint64_t key, uint32_t events);
  void pump();
  Target* choose(Clock::time_point now);
  Sent send_frame(Target& target, Frame& frame);
  void observe(Target& target, Clock::time_point now);
  void drop(uint64_t key);
  void refuse(Frame& frame, const char* message);
  void enqueue(Frame frame);
  void expire(Clock::time_point now);
  void wake();

  std::mutex mu_;  // guards the inbox below
  std::vector<std::pair<int, int>> new_targets_;  // (index, fd)
  std::vector<Frame> new_frames_;
  bool stopping_ = false;
  Clock::time_point deadline_;

  // The sending thread's own:
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::map<uint64_t, Target> targets_;  // by epoll key (a serial: a reused descriptor is a new key)
  uint64_t next_key_ = 1;  // 0 is the wake-up
  int next_index_ = 0;  // whose turn it is
  const size_t max_queued_;
  const Clock::duration max_wait_;
  std::deque<Frame> queue_;
  size_t queued_bytes_ = 0;

  std::atomic<uint64_t> sent_{0}, failed_{0};
  std::thread thread_;
};

}  // namespace loopserve::http
