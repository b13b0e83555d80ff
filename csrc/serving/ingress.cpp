#include "serving/ingress.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>

#include "bytes_tensor.h"
#include "serving/dispatch.h"
#include "serving/feedback_tap.h"

namespace loopserve {

using ipc::ChannelRegion;
using ipc::SlotHeader;

namespace {

constexpr int kRoundMessages = 64;  // per channel per round: one busy front end cannot starve the rest
constexpr auto kFullRingPatience = std::chrono::seconds(30);
// Polling before sleep (see ingress.h): a round that takes more than this many requests means
// busy front ends, and the window closes; a window that grows starts at kSpinStartUs.
constexpr int kSpinFewMessages = 4;
constexpr int64_t kSpinStartUs = 8;

}  // namespace

// One channel as the engine sees it: reads its requests, and, as the CompletionSink of
// every request taken from it, writes their responses. Thread-safety: next()/reclaim as
// shm_ring.h says (reading on the ingress thread only; reclaim under reclaim_mu_);
// responses from any thread under produce_mu_.
class IngressLink final : public CompletionSink, public std::enable_shared_from_this<IngressLink> {
 public:
  explicit IngressLink(std::shared_ptr<ChannelRegion> region)
      : region_(std::move(region)),
        requests_(region_->request_control(), region_->request_slots()),
        responses_(region_->response_control(), region_->response_slots()) {}

  // A request on its way through a batcher: what its completion needs to answer it.
  struct Pending {
    std::shared_ptr<IngressLink> link;
    SlotHeader* slot;  // its inputs live there until it completes
    uint64_t token;    // the front end's
    std::shared_ptr<const VersionRoute> route;
    std::string id;    // the request id the answer carries (given, or made for feedback)
    std::string group;
    bool answers;      // false: a shadow copy
    std::vector<InputView> inputs;  // kept only for feedback (they view `slot`)
  };

  const std::shared_ptr<ChannelRegion>& region() const { return region_; }
  SlotHeader* next() { return requests_.next(); }
  bool ready() const { return requests_.ready(); }
  bool prepare_sleep() { return requests_.prepare_sleep(); }
  void cancel_sleep() { requests_.cancel_sleep(); }
  void close() { closed_.store(true); }
  bool closed() const { return closed_.load(); }
  uint64_t dropped() const { return dropped_.load(); }

  void done_with(SlotHeader* slot) {
    if (!ipc::RingConsumer::drop_holder(slot)) return;
    std::lock_guard<std::mutex> lock(reclaim_mu_);
    requests_.reclaim();
  }

  void refuse(SlotHeader* slot, uint64_t token, const Refusal& r) {
    {
      std::lock_guard<std::mutex> lock(produce_mu_);
      bool wake = write_response(token, 0, r.status, r.message, nullptr, nullptr);
      if (wake) ChannelRegion::wake(region_->response_efd());
    }
    done_with(slot);
  }

  void deliver(std::vector<Completion>&& items) override {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(produce_mu_);
      for (Completion& c : items) {
        auto* p = reinterpret_cast<Pending*>(c.token);
        if (p->answers) {
          if (c.status == Status::kOk) {
            if (p->route->feedback) p->route->feedback->record(p->id, p->group, c, p->inputs);
            wake |= write_response(p->token, p->route->version, 200, p->id, &c,
                                   &p->route->batcher->config().outputs);
          } else {
            wake |= write_response(p->token, p->route->version, http_status(c.status), c.error ? *c.error : "",
                                   nullptr, nullptr);
          }
        }
      }
      if (wake) ChannelRegion::wake(region_->response_efd());
    }
    for (Completion& c : items) {
      std::unique_ptr<Pending> p(reinterpret_cast<Pending*>(c.token));
      done_with(p->slot);
    }
  }

 private:
  // With produce_mu_ held. Returns whether the front end must be woken.
  bool write_response(uint64_t token, int64_t version, uint16_t status, const std::string& text,
                      const Completion* c, const std::vector<TensorSpec>* specs) {
    if (closed_.load()) {
      dropped_.fetch_add(1);
      return false;
    }
    std::vector<ipc::TensorOut> tensors;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<const std::byte*> sources;
    if (c) {
      const auto& outputs = c->result->outputs;
      shapes.reserve(outputs.size());
      for (size_t i = 0; i < outputs.size(); ++i) {
        const OutputTensor& o = outputs[i];
        std::vector<int64_t> shape = o.shape;
        const std::byte* data = o.data.data();
        size_t nbytes = o.data.size();
        if (!c->whole) {
          if (o.dtype == DType::kBytes) {
            const int64_t per_row = element_count(o.shape) / o.shape[0];
            size_t begin = bytes_element_offset(data, nbytes, c->row_begin * per_row);
            size_t end = begin + bytes_element_offset(data + begin, nbytes - begin, c->rows * per_row);
            data += begin;
            nbytes = end - begin;
          } else {
            const size_t row_bytes = nbytes / static_cast<size_t>(o.shape[0]);
            data += static_cast<size_t>(c->row_begin) * row_bytes;
            nbytes = static_cast<size_t>(c->rows) * row_bytes;
          }
          shape[0] = c->rows;
        }
        shapes.push_back(std::move(shape));
        sources.push_back(data);
        tensors.push_back({(*specs)[i].name, o.dtype, nullptr, static_cast<uint8_t>(shapes.back().size()), nbytes});
      }
      for (size_t i = 0; i < tensors.size(); ++i) tensors[i].shape = shapes[i].data();
    }
    ipc::MessageLayout layout = ipc::plan_message(sizeof(ipc::WireResponse), text.size(), tensors);
    std::byte* payload = responses_.reserve(layout.size);
    if (payload == nullptr && layout.size > responses_.max_payload()) {
      return write_response(token, version, 500,
                            "the response (" + std::to_string(layout.size) +
                                " bytes) is larger than the front-end channel can carry; raise http.channel_bytes",
                            nullptr, nullptr);
    }
    const auto give_up = std::chrono::steady_clock::now() + kFullRingPatience;
    // The front end is behind: wake it before waiting for room. It may be asleep with this
    // batch's earlier answers unseen: publishing the first took its sleeping flag, and the
    // batch's one wake-up comes only after the last answer, which waits here for room.
    if (payload == nullptr) ChannelRegion::wake(region_->response_efd());
    while (payload == nullptr) {  // wait for it to take responses
      if (closed_.load() || std::chrono::steady_clock::now() > give_up) {
        dropped_.fetch_add(1);
        return false;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      payload = responses_.reserve(layout.size);
    }
    ipc::WireResponse w{};
    w.token = token;
    w.version = version;
    w.status = status;
    w.n_tensors = static_cast<uint8_t>(tensors.size());
    w.text_len = static_cast<uint32_t>(text.size());
    std::memcpy(payload, &w, sizeof w);
    std::memcpy(payload + layout.text_at, text.data(), text.size());
    ipc::write_tensor_headers(payload, layout, tensors);
    for (size_t i = 0; i < tensors.size(); ++i) std::memcpy(payload + layout.data_at[i], sources[i], tensors[i].nbytes);
    return responses_.publish();
  }

  std::shared_ptr<ChannelRegion> region_;
  ipc::RingConsumer requests_;
  std::mutex reclaim_mu_;
  std::mutex produce_mu_;  // guards responses_
  ipc::RingProducer responses_;
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> dropped_{0};
};

namespace {

std::string_view take_text(const std::byte* payload, size_t& at, size_t len) {
  std::string_view s(reinterpret_cast<const char*>(payload + at), len);
  at += len;
  return s;
}

}  // namespace

Ingress::Ingress(std::shared_ptr<Router> router, int64_t spin_us)
    : router_(std::move(router)), spin_max_us_(std::clamp<int64_t>(spin_us, 0, ipc::kMaxSpinUs)) {
  control_efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (control_efd_ < 0 || epoll_fd_ < 0) throw std::system_error(errno, std::generic_category(), "ingress");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = control_efd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, control_efd_, &ev);
  thread_ = std::thread([this] { run(); });
}

Ingress::~Ingress() {
  stop();
  ::close(epoll_fd_);
  ::close(control_efd_);
}

std::shared_ptr<ChannelRegion> Ingress::open_channel(size_t ring_bytes) {
  auto link = std::make_shared<IngressLink>(ChannelRegion::create(ring_bytes));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = link->region()->request_efd();
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "epoll_ctl");
  {
    std::lock_guard<std::mutex> lock(links_mu_);
    links_.push_back(link);
  }
  wake();
  return link->region();
}

void Ingress::close_channel(const std::shared_ptr<ChannelRegion>& region) {
  std::lock_guard<std::mutex> lock(links_mu_);
  for (auto it = links_.begin(); it != links_.end(); ++it) {
    if ((*it)->region() != region) continue;
    (*it)->close();
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, region->request_efd(), nullptr);
    links_.erase(it);
    break;
  }
}

void Ingress::stop() {
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();
    return;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void Ingress::wake() { ChannelRegion::wake(control_efd_); }

IngressStats Ingress::stats() const {
  IngressStats s;
  s.requests = requests_.load();
  s.refused = refused_.load();
  s.rounds = rounds_.load();
  s.sleeps = sleeps_.load();
  s.spins = spins_.load();
  s.spin_window_us = static_cast<uint64_t>(spin_window_shown_.load());
  std::lock_guard<std::mutex> lock(links_mu_);
  for (const auto& l : links_) s.responses_dropped += l->dropped();
  return s;
}

void Ingress::run() {
  using Clock = std::chrono::steady_clock;
  std::vector<std::shared_ptr<IngressLink>> links;
  std::vector<std::shared_ptr<Batcher>> deferred;
  while (!stopping_.load()) {
    {
      std::lock_guard<std::mutex> lock(links_mu_);
      links = links_;
    }
    int taken = 0;
    {
      const std::shared_ptr<const RouteTable> table = router_->snapshot();
      for (const auto& link : links) {
        for (int n = 0; n < kRoundMessages; ++n) {
          SlotHeader* slot = link->next();
          if (slot == nullptr) break;
          ++taken;
          requests_.fetch_add(1, std::memory_order_relaxed);
          handle(*table, link, slot, deferred);
        }
      }
      // The round's requests for quick models run here, as one batch per model.
      for (const auto& b : deferred) b->run_deferred();
      deferred.clear();
    }
    if (taken > 0) {
      rounds_.fetch_add(1, std::memory_order_relaxed);
      if (taken > kSpinFewMessages && spin_window_us_ > 0) {  // busy front ends: the cores are theirs
        spin_window_us_ = 0;
        spin_window_shown_.store(0, std::memory_order_relaxed);
      }
      continue;
    }
    if (spin_window_us_ > 0 && spin(links)) {
      spins_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    bool all_empty = true;
    size_t prepared = 0;
    for (; prepared < links.size(); ++prepared) {
      if (!links[prepared]->prepare_sleep()) {
        all_empty = false;
        break;
      }
    }
    if (all_empty) {
      sleeps_.fetch_add(1, std::memory_order_relaxed);
      epoll_event events[16];
      const auto slept_from = Clock::now();
      int n = ::epoll_wait(epoll_fd_, events, 16, 200);
      for (int i = 0; i < n; ++i) ChannelRegion::clear(events[i].data.fd);
      if (spin_max_us_ > 0)
        adapt_after_sleep(n > 0 ? std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - slept_from).count()
                                : INT64_MAX);
    }
    for (size_t i = 0; i < prepared; ++i) links[i]->cancel_sleep();
  }
}

bool Ingress::spin(const std::vector<std::shared_ptr<IngressLink>>& links) {
  using Clock = std::chrono::steady_clock;
  auto now = Clock::now();
  const auto until = now + std::chrono::microseconds(spin_window_us_);
  do {
    for (const auto& link : links)
      if (link->ready()) return true;
    if (stopping_.load(std::memory_order_relaxed)) return false;
    std::this_thread::yield();  // a runnable thread on this core goes first
    const auto before = now;
    now = Clock::now();
    if (now - before > ipc::kYieldContended) {  // one did: the core is wanted, polling takes it from others
      spin_window_us_ = 0;
      spin_window_shown_.store(0, std::memory_order_relaxed);
      return false;
    }
  } while (now < until);
  return false;
}

void Ingress::adapt_after_sleep(int64_t slept_us) {
  const int64_t waited = slept_us >= INT64_MAX - spin_window_us_ ? INT64_MAX : slept_us + spin_window_us_;
  if (waited <= spin_max_us_)  // polling a little longer would have caught it
    spin_window_us_ = std::min(spin_max_us_, std::max(kSpinStartUs, 2 * spin_window_us_));
  else  // the rings stayed empty past the longest poll: polling does not pay now
    spin_window_us_ /= 2;
  if (spin_window_us_ < kSpinStartUs / 2) spin_window_us_ = 0;
  spin_window_shown_.store(spin_window_us_, std::memory_order_relaxed);
}

void Ingress::handle(const RouteTable& table, const std::shared_ptr<IngressLink>& link, SlotHeader* slot,
                     std::vector<std::shared_ptr<Batcher>>& deferred) {
  const std::byte* payload = slot->payload();
  const size_t size = slot->payload_size;
  ipc::WireRequest w;
  if (size < sizeof w) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    link->refuse(slot, 0, {400, "malformed request message"});
    return;
  }
  std::memcpy(&w, payload, sizeof w);
  try {
    const size_t text = size_t{w.model_len} + w.version_len + w.key_len + w.id_len + w.group_len;
    if (sizeof w + text > size) throw Refusal{400, "malformed request message"};
    size_t at = sizeof w;
    const std::string_view model = take_text(payload, at, w.model_len);
    const std::string_view version = take_text(payload, at, w.version_len);
    const std::string_view key = take_text(payload, at, w.key_len);
    const std::string_view id = take_text(payload, at, w.id_len);
    const std::string_view group = take_text(payload, at, w.group_len);
    std::vector<ipc::TensorIn> tensors;
    try {
      tensors = ipc::read_tensors(payload, size, at, w.n_tensors);
    } catch (const std::invalid_argument& e) {
      throw Refusal{400, e.what()};
    }
    Routed routed = route_request(table, model, version, key, tensors, w.flags & ipc::kRawInput);
    const std::shared_ptr<const VersionRoute>& answering = routed.answering;
    std::vector<InputView>& views = routed.views;
    const auto& shadows = routed.shadows;
    ipc::RingConsumer::add_holders(slot, static_cast<uint32_t>(shadows.size()));
    auto pending = std::make_unique<IngressLink::Pending>(IngressLink::Pending{
        link, slot, w.token, answering, std::string(id), std::string(group), true, {}});
    if (answering->feedback) {
      if (pending->id.empty()) pending->id = random_id();
      pending->inputs = views;
    }
    // Shadows first: their copies view the same message, held until every copy completes.
    for (const auto& s : shadows) {
      auto copy = std::make_unique<IngressLink::Pending>(IngressLink::Pending{link, slot, 0, s, {}, {}, false, {}});
      if (submit_shadow(s->batcher, views, reinterpret_cast<uint64_t>(copy.get()), link, deferred))
        copy.release();
      else
        link->done_with(slot);
    }
    Batcher::Submitted r = submit_answering(*answering->batcher, std::move(views), reinterpret_cast<uint64_t>(pending.get()),
                                            link, w.priority, w.timeout_us);
    pending.release();  // the completion owns it now
    if (r == Batcher::Submitted::kDeferred) deferred.push_back(answering->batcher);
  } catch (const Refusal& r) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    link->refuse(slot, w.token, r);
  }
}

}  // namespace loopserve
