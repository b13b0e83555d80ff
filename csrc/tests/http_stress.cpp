// The engine's native HTTP server under ThreadSanitizer and AddressSanitizer
// (tests/test_native.py), with real loopback clients: four keep-alive clients send JSON infer
// requests (some pipelined two at a time) and one binary tensors to an echo model, each answer
// checked, and four more to a slow model whose answers the loop writes while a whole batch
// waits; one client sends other routes, which are handed over (SCM_RIGHTS) to two stand-in front ends,
// one of them stalled (it reads nothing until the end): the other answers all but what the
// stalled one took before it was seen to stall; meanwhile the model's version is swapped again and
// again (publish, wait until no snapshot names the old one, stop it), as a hot swap does. Then a
// client that never reads a large answer is closed after send_timeout_s, and one that reads a
// large answer only after the server was told to stop still gets all of it (the drain).
// Exits non-zero on failure.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "batcher.h"
#include "executor.h"
#include "http/server.h"
#include "serving/route_table.h"
#include "tests/echo_route.h"

using namespace loopserve;

namespace {

using stress::echo_batcher;
using stress::route_to;

constexpr int64_t kWide = 1 << 20;  // INT64 values in a row of the wide model's answer: 8 MiB

// The wide model: each row's one value, repeated kWide times.
class WideExecutor final : public Executor {
 public:
  void run(const Batch& batch, BatchResult& out) override {
    out.outputs.resize(1);
    OutputTensor& o = out.outputs[0];
    o.dtype = DType::kInt64;
    o.shape = {batch.rows, kWide};
    o.data.reserve(static_cast<size_t>(batch.rows * kWide) * 8);
    auto* to = reinterpret_cast<int64_t*>(o.data.data());
    for (int64_t r = 0; r < batch.rows; ++r) {
      int64_t value;
      std::memcpy(&value, batch.inputs[0].data + r * 8, 8);
      std::fill(to + r * kWide, to + (r + 1) * kWide, value);
    }
  }
};

std::shared_ptr<Batcher> wide_batcher() {
  BatcherConfig c;
  c.model_name = "wide";
  c.inputs = {TensorSpec{"x", DType::kInt64, {1}}};
  c.outputs = {TensorSpec{"y", DType::kInt64, {kWide}}};
  c.max_batch_size = 4;
  return std::make_shared<Batcher>(c, std::make_shared<WideExecutor>());
}

// The slow model: echo, 1 ms a batch of at most 2 rows, on its one worker thread (never on the
// loop: far over the inline budget). With several clients a whole batch waits while one runs,
// so the loop writes the answers and the worker goes on (ServerState::hand_to_loop).
class SlowEchoExecutor final : public Executor {
 public:
  void run(const Batch& batch, BatchResult& out) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    echo_.run(batch, out);
  }

 private:
  EchoExecutor echo_;
};

std::shared_ptr<Batcher> slow_batcher() {
  BatcherConfig c;
  c.model_name = "slow";
  c.inputs = {TensorSpec{"x", DType::kInt64, {2}}};
  c.outputs = {TensorSpec{"x", DType::kInt64, {2}}};
  c.max_batch_size = 2;
  return std::make_shared<Batcher>(c, std::make_shared<SlowEchoExecutor>());
}

// One row of the wide model, binary in and out: an answer of 8 MiB, all `value`.
std::string wide_request(int64_t value) {
  const std::string json = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,1],\"datatype\":\"INT64\","
                           "\"parameters\":{\"binary_data_size\":8}}],\"parameters\":{\"binary_data_output\":true}}";
  std::string body = json;
  body.append(reinterpret_cast<const char*>(&value), 8);
  return "POST /v2/models/wide/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: " +
         std::to_string(json.size()) + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A client that reads slowly: a small receive buffer, so that most of an answer waits in the server.
int connect_to(int port, int receive_buffer = 0);

// A client with a small receive buffer: a large answer to it waits in the server.
int slow_reader(int port) { return connect_to(port, 4096); }

// Whether an answer arrives on `fd` within `ms`.
bool readable_within(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

const char kHandedAnswer[] = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhanded";

// Reads one answer (head and Content-Length body) from `fd`, with `buffer` keeping what was
// read past it. Returns the status, and the body in `body`; -1 when the connection closed.
int read_answer(int fd, std::string& buffer, std::string& body) {
  while (true) {
    size_t head_end = buffer.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      size_t cl = buffer.find("\r\ncontent-length: ");  // not inference-header-content-length
      if (cl == std::string::npos || cl > head_end) return -1;
      // Not buffer.substr(cl + 18): that copies all read so far for every chunk of a large
      // answer, which under TSan made an 8 MiB answer take longer than the drain's deadline.
      const size_t length = std::strtoull(buffer.c_str() + cl + 18, nullptr, 10);
      if (buffer.size() >= head_end + 4 + length) {
        int status = std::stoi(buffer.substr(9, 3));
        body = buffer.substr(head_end + 4, length);
        buffer.erase(0, head_end + 4 + length);
        return status;
      }
    }
    char chunk[4096];
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return -1;
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

int connect_to(int port, int receive_buffer) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (receive_buffer > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string infer_request(int64_t a, int64_t b, const std::string& model = "echo") {
  std::string body = "{\"id\":\"r" + std::to_string(a) + "\",\"inputs\":[{\"name\":\"x\",\"shape\":[1,2],\"datatype\":\"INT64\","
                     "\"data\":[" + std::to_string(a) + "," + std::to_string(b) + "]}]}";
  return "POST /v2/models/" + model + "/infer HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

// The same with Triton's binary tensor extension, in and out: 16 bytes of input after the JSON.
std::string binary_request(int64_t a, int64_t b) {
  const std::string json = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,2],\"datatype\":\"INT64\","
                           "\"parameters\":{\"binary_data_size\":16}}],\"parameters\":{\"binary_data_output\":true}}";
  std::string body = json;
  body.append(reinterpret_cast<const char*>(&a), 8);
  body.append(reinterpret_cast<const char*>(&b), 8);
  return "POST /v2/models/echo/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: " +
         std::to_string(json.size()) + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

bool send_all(int fd, const std::string& bytes) {
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
    if (n <= 0) return false;
    at += static_cast<size_t>(n);
  }
  return true;
}

// One keep-alive client: `count` requests, two at a time every third round (pipelined).
void run_client(int port, int c, int count, std::atomic<int>& failures, const std::string& model = "echo") {
  int fd = connect_to(port);
  if (fd < 0) {
    ++failures;
    return;
  }
  std::string buffer, body;
  for (int i = 0; i < count;) {
    const int batch = (i % 3 == 0 && i + 1 < count) ? 2 : 1;
    std::string out;
    for (int k = 0; k < batch; ++k) out += infer_request(int64_t{c} * 1000000 + i + k, -(i + k), model);
    if (!send_all(fd, out)) {
      ++failures;
      break;
    }
    for (int k = 0; k < batch; ++k, ++i) {
      const int status = read_answer(fd, buffer, body);
      const std::string want = "\"data\":[" + std::to_string(int64_t{c} * 1000000 + i) + "," + std::to_string(-i) + "]";
      const std::string want_id = "\"id\":\"r" + std::to_string(int64_t{c} * 1000000 + i) + "\"";
      if (status != 200 || body.find(want) == std::string::npos || body.find(want_id) == std::string::npos) {
        std::fprintf(stderr, "FAIL: client %d request %d: status %d body %s\n", c, i, status, body.c_str());
        ++failures;
        ::close(fd);
        return;
      }
    }
  }
  ::close(fd);
}

// A client of binary tensors: `count` requests one after another; each answer's last 16
// bytes must be its input's.
void run_binary_client(int port, int count, std::atomic<int>& failures) {
  int fd = connect_to(port);
  std::string buffer, body;
  for (int i = 0; fd >= 0 && i < count; ++i) {
    const int64_t in[2] = {i, -7 * int64_t{i}};
    if (!send_all(fd, binary_request(in[0], in[1])) || read_answer(fd, buffer, body) != 200 || body.size() < 16 ||
        std::memcmp(body.data() + body.size() - 16, in, 16) != 0) {
      std::fprintf(stderr, "FAIL: binary request %d: %s\n", i, body.c_str());
      ++failures;
      break;
    }
  }
  if (fd < 0) ++failures;
  else ::close(fd);
}

// A stand-in front end: takes each handed-off connection and answers it once.
void run_front_end(int sock, std::atomic<int>& adopted) {
  std::string frames;
  std::vector<int> fds;
  while (true) {
    char data[65536];
    iovec iov{data, sizeof data};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(sock, &msg, 0);
    if (n <= 0) break;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.push_back(fd);
      }
    }
    frames.append(data, static_cast<size_t>(n));
    while (frames.size() >= 8 && !fds.empty()) {
      uint32_t len = 0;
      for (int i = 0; i < 4; ++i) len |= static_cast<uint32_t>(static_cast<unsigned char>(frames[4 + i])) << (8 * i);
      if (frames.compare(0, 4, "LSH1") != 0 || frames.size() < 8 + len) break;
      frames.erase(0, 8 + len);
      send_all(fds.front(), kHandedAnswer);
      ::close(fds.front());
      fds.erase(fds.begin());
      ++adopted;
    }
  }
  for (int fd : fds) ::close(fd);
}

}  // namespace

int main() {
  constexpr int kClients = 4;
  constexpr int kRequests = 1500;
  constexpr int kSlowClients = 4;
  constexpr int kSlowRequests = 150;
  constexpr int kHandoffs = 50;
  constexpr int kBinaryRequests = 500;
  std::atomic<int> failures{0}, adopted{0};
  auto router = std::make_shared<Router>();
  auto batcher = echo_batcher();
  router->set_model(route_to(batcher, 1));

  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 128) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    return 1;
  }
  const int port = ntohs(addr.sin_port);
  int pair[2];
  ::socketpair(AF_UNIX, SOCK_STREAM, 0, pair);

  http::ServerOptions options;
  options.latency_bounds = {0.001, 0.01, 0.1};
  options.overload_message = "overloaded";
  options.send_timeout_s = 1.0;
  options.drain_s = 30.0;  // ends as soon as the last answer has gone
  options.stall_s = 30.0;  // a request half sent stays here (the drain refuses it) rather than go to a front end
  auto wide = wide_batcher(), slow = slow_batcher();
  router->set_model(route_to(wide, 1));
  router->set_model(route_to(slow, 1));
  int stalled_pair[2];
  ::socketpair(AF_UNIX, SOCK_STREAM, 0, stalled_pair);
  auto server = std::make_unique<http::HttpServer>(router, listener, options);
  server->set_handoff(0, pair[0]);
  server->set_handoff(1, stalled_pair[0]);
  std::thread front_end([&] { run_front_end(pair[1], adopted); });
  std::atomic<bool> resume{false};
  std::atomic<int> adopted_late{0};
  std::thread stalled_front_end([&] {  // reads nothing until told to
    while (!resume.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    run_front_end(stalled_pair[1], adopted_late);
  });
  std::vector<int> held;  // handed to the stalled front end: answered once it resumes

  std::atomic<bool> done{false};
  std::thread swapper([&] {  // hot swaps while the clients send
    int64_t version = 1;
    while (!done.load()) {
      auto next = echo_batcher();
      router->set_model(route_to(next, ++version));
      router->wait_quiescent();
      batcher->stop();
      batcher = next;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) clients.emplace_back([&, c] { run_client(port, c, kRequests, failures); });
  for (int c = 0; c < kSlowClients; ++c)
    clients.emplace_back([&, c] { run_client(port, c, kSlowRequests, failures, "slow"); });
  clients.emplace_back([&] { run_binary_client(port, kBinaryRequests, failures); });
  clients.emplace_back([&] {  // other routes: handed over, answered by the front end that reads
    for (int i = 0; i < kHandoffs; ++i) {
      int fd = connect_to(port);
      std::string buffer, body;
      if (fd < 0 || !send_all(fd, "GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")) {
        std::fprintf(stderr, "FAIL: handoff %d\n", i);
        ++failures;
      } else if (!readable_within(fd, 3000)) {
        held.push_back(fd);  // the stalled front end has it
        continue;
      } else if (read_answer(fd, buffer, body) != 200 || body != "handed") {
        std::fprintf(stderr, "FAIL: handoff %d\n", i);
        ++failures;
      }
      if (fd >= 0) ::close(fd);
    }
  });
  for (auto& t : clients) t.join();
  done.store(true);
  swapper.join();
  // A stalled front end takes at most what it was given before it was seen not to read (it
  // had read all it was sent): one; the rest went to the other.
  if (held.size() > 1) {
    std::fprintf(stderr, "FAIL: %zu handoffs went to the stalled front end\n", held.size());
    ++failures;
  }
  resume.store(true);
  for (int fd : held) {
    std::string buffer, body;
    if (read_answer(fd, buffer, body) != 200 || body != "handed") {
      std::fprintf(stderr, "FAIL: a handoff held by the stalled front end\n");
      ++failures;
    }
    ::close(fd);
  }

  // A client that never reads its (large) answer: closed after send_timeout_s, and counted.
  int never = slow_reader(port);
  if (never < 0 || !send_all(never, wide_request(7))) ++failures;
  for (int i = 0; i < 3000 && server->stats().send_timeouts == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (server->stats().send_timeouts != 1) {
    std::fprintf(stderr, "FAIL: a client that never reads was not closed\n");
    ++failures;
  }
  ::close(never);

  // Stopping while a large answer waits for a slow reader: the whole answer still arrives;
  // a request still arriving is refused (503).
  int late = slow_reader(port);
  std::string buffer, body;
  if (late < 0 || !send_all(late, wide_request(42)) || !readable_within(late, 30000)) ++failures;
  const std::string whole = infer_request(1, 2);
  int partial = connect_to(port);
  if (partial < 0 || !send_all(partial, whole.substr(0, whole.size() - 5))) ++failures;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // read by the loop meanwhile
  std::thread stopper([&] { server->stop(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the loop drains meanwhile
  const int status = late < 0 ? -1 : read_answer(late, buffer, body);
  const int64_t last = body.size() >= 8 ? *reinterpret_cast<const int64_t*>(body.data() + body.size() - 8) : 0;
  if (status != 200 || body.size() < size_t{kWide} * 8 || last != 42) {
    std::fprintf(stderr, "FAIL: the answer read during the drain: status %d, %zu bytes\n", status, body.size());
    ++failures;
  }
  std::string partial_buffer, partial_body;
  if (partial < 0 || read_answer(partial, partial_buffer, partial_body) != 503 ||
      partial_body.find("shutting down") == std::string::npos) {
    std::fprintf(stderr, "FAIL: a request still arriving at the stop was not refused: %s\n", partial_body.c_str());
    ++failures;
  }
  stopper.join();
  if (late >= 0) ::close(late);
  if (partial >= 0) ::close(partial);

  const http::ServerStats s = server->stats();
  server.reset();  // closes the handoff sockets, which ends the stand-in front ends
  front_end.join();
  stalled_front_end.join();
  ::close(pair[1]);
  ::close(stalled_pair[1]);
  batcher->stop();
  wide->stop();
  slow->stop();
  if (s.answers_by_loop == 0) {
    std::fprintf(stderr, "FAIL: the slow model's worker wrote every answer itself, with whole batches waiting\n");
    ++failures;
  }
  if (s.served != uint64_t{kClients} * kRequests + uint64_t{kSlowClients} * kSlowRequests + kBinaryRequests + 2 ||
      adopted.load() + adopted_late.load() != kHandoffs) {
    std::fprintf(stderr, "FAIL: served %llu, handed off %d + %d\n", static_cast<unsigned long long>(s.served),
                 adopted.load(), adopted_late.load());
    ++failures;
  }
  if (failures.load() != 0) return 1;
  std::printf("ok\n");
  return 0;
}
