// Hands a client connection to a Python front end: its descriptor goes over a Unix socket
// (SCM_RIGHTS) with the bytes already read from it, and from then on the connection is the
// front end's (python/loopserve/server/handoff.py adopts it into uvicorn). This is how the
// native HTTP path leaves to Python every request it does not take, with every route,
// error message and limit exactly as Python has them.
//
// Frame on the socket: 4 bytes "LSH1", a 4-byte little-endian length, then that many bytes
// (what was read); the descriptor rides with the frame's first byte.
//
// A thread of its own sends (a blocking send to a front end that is slow to read must not
// stall the server's loop); front ends take turns. A front end whose socket fails is dropped
// until it is set again; with none left, the connection is closed.
//
// Thread-safety: every public member may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace loopserve::http {

class Handoff {
 public:
  Handoff();
  ~Handoff();
  Handoff(const Handoff&) = delete;
  Handoff& operator=(const Handoff&) = delete;

  // The socket of front end `index` (replacing an earlier one, which is closed); takes `fd`.
  void set_target(int index, int fd);
  // Queues `fd` (taken) with the bytes read from it so far.
  void send(int fd, std::string read_so_far);
  void stop();
  uint64_t sent() const;
  uint64_t failed() const;

 private:
  void run();
  bool send_to(int target, int fd, const std::string& bytes);

  mutable std::mutex mu_;  // guards everything below but the thread
  std::condition_variable cv_;
  std::map<int, int> targets_;  // front end index -> socket
  std::deque<std::pair<int, std::string>> queue_;
  int next_ = 0;
  bool stopping_ = false;
  uint64_t sent_ = 0, failed_ = 0;
  std::thread thread_;
};

}  // namespace loopserve::http
