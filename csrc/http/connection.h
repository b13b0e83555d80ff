// One client connection of the engine's native HTTP server (http/server.h).
//
// Thread-safety: the server's loop thread alone reads the connection and keeps its parse
// state (the public fields below: bytes read, the request in flight, timestamps). An answer
// may be written from any thread (the one that completed the batch): write_answer() and
// flush() hold out_mu_, which guards the unwritten rest of an answer and `closed_`. The
// descriptor is closed when the last owner lets go (the loop, or a request still in flight),
// so a late answer never writes to a descriptor reused by another connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "completion.h"

namespace loopserve::http {

class ServerState;

class Connection final : public CompletionSink, public std::enable_shared_from_this<Connection> {
 public:
  using Clock = std::chrono::steady_clock;

  Connection(int fd, std::shared_ptr<ServerState> state);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_; }
  // Gives the descriptor up (handed to a front end): this object will not close it.
  int release_fd();

  // Any thread. Writes what it can now and keeps the rest for flush(); false when the peer
  // is gone (the answer is dropped).
  bool write_answer(std::string_view bytes);
  // The loop thread, when the socket is writable: true once nothing is left to write.
  bool flush();
  bool output_pending();
  // Output is pending and none of it has gone since `since` (the client does not read).
  bool output_stalled_since(Clock::time_point since);
  // Stops writing: what is left is dropped (the loop closes the connection).
  void close_output();

  // Completions of this connection's request (and its shadows' copies, which answer nobody).
  void deliver(std::vector<Completion>&& items) override;

  // -- the loop thread's own ------------------------------------------------------------
  std::string in;              // bytes read and not yet consumed, from `consumed` on
  size_t consumed = 0;
  bool in_flight = false;      // a request is being answered; the next waits for it
  bool keep_alive = true;      // the request in flight keeps the connection open
  bool peer_closed = false;    // the client closed its side
  bool registered = false;     // in the loop's table
  bool fresh = true;           // no request read from it yet
  bool read_capped = false;    // reading stopped at the buffer's cap: more may wait in the socket
  Clock::time_point since;     // when it went idle, or its partial request began
  int64_t seq = 0;             // the loop's table key

 private:
  int fd_;
  std::shared_ptr<ServerState> state_;
  std::mutex out_mu_;  // guards out_, out_at_, out_progress_, closed_
  std::string out_;
  size_t out_at_ = 0;
  Clock::time_point out_progress_;  // when output was last left pending, or some of it went
  bool closed_ = false;
};

}  // namespace loopserve::http
