// A ring of variable-size messages in memory shared by two processes: one producer side,
// one consumer side. The engine and each HTTP front end talk through two of them (requests
// one way, responses the other); see channel.h.
//
// Framing: every message sits in a slot (a SlotHeader, then its payload), padded to 64
// bytes; a message never wraps: when it does not fit before the end of the region, a padding
// slot fills the rest and the message starts again at offset 0. `head` and `tail` count bytes
// since creation, so full and empty differ without a spare slot.
//
// Release: an in-order consumer releases each message when done with it. A consumer whose
// messages finish out of order (requests of different models) marks each slot released and
// moves `tail` over the released run at the front, so space returns in order.
//
// Sleep: a consumer that finds nothing sets `consumer_sleeping`, looks once more, then blocks
// on its eventfd; a producer that sees the flag after publishing takes it and writes the
// eventfd. Both sides use sequentially consistent operations for this, so a message published
// while the consumer decides to sleep is never missed.
//
// Thread-safety: RingControl lives in shared memory and is used by one producing process and
// one consuming process. Within a process, each side must be driven by one thread at a time
// (callers serialise with their own mutex where several threads produce or release).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace loopserve::ipc {

constexpr size_t kSlotAlign = 64;
// A side that polls a ring (ready()) before it sleeps yields the core between looks; a yield
// that returns later than this means another thread wanted the core and ran: the poller then
// stops polling, so it never takes CPU from a busy process (a yield with nothing else to run
// returns in about a microsecond).
constexpr std::chrono::microseconds kYieldContended{20};
// The longest poll either side runs (the config allows 10 ms; this bounds direct callers too).
constexpr int64_t kMaxSpinUs = 1'000'000;

inline size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

struct RingControl {
  alignas(64) std::atomic<uint64_t> head{0};  // bytes published by the producer
  alignas(64) std::atomic<uint64_t> tail{0};  // bytes released by the consumer
  alignas(64) std::atomic<uint32_t> consumer_sleeping{0};
  uint64_t capacity = 0;  // bytes of slots after the control block; a multiple of kSlotAlign
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared-memory atomics must be lock-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "shared-memory atomics must be lock-free");

enum SlotKind : uint32_t { kMessage = 1, kPadding = 2 };

struct SlotHeader {
  uint32_t size;  // the whole slot, header included; a multiple of kSlotAlign
  uint32_t kind;
  // Out-of-order release: how many users still hold the slot's payload (0: free).
  std::atomic<uint32_t> holders;
  uint32_t payload_size;
  std::byte* payload() { return reinterpret_cast<std::byte*>(this) + kHeaderBytes; }
  const std::byte* payload() const { return reinterpret_cast<const std::byte*>(this) + kHeaderBytes; }
  static constexpr size_t kHeaderBytes = 64;  // payloads start 64-byte aligned
};
static_assert(sizeof(SlotHeader) <= SlotHeader::kHeaderBytes, "slot header too large");

class RingProducer {
 public:
  RingProducer() = default;
  RingProducer(RingControl* control, std::byte* slots) : c_(control), slots_(slots) {}

  // The largest payload a message may carry: half the ring, so one message never waits for
  // the whole ring to drain.
  size_t max_payload() const { return c_->capacity / 2 - SlotHeader::kHeaderBytes; }

  // Room for a message of `payload` bytes, or nullptr when the ring has none now (or the
  // payload is over max_payload()). Fill it, then publish(); reserve again only after that.
  std::byte* reserve(size_t payload) {
    if (payload > max_payload()) return nullptr;
    const uint64_t need = align_up(SlotHeader::kHeaderBytes + payload, kSlotAlign);
    const uint64_t head = c_->head.load(std::memory_order_relaxed);
    const uint64_t tail = c_->tail.load(std::memory_order_acquire);
    const uint64_t free = c_->capacity - (head - tail);
    const uint64_t at = head % c_->capacity;
    const uint64_t to_end = c_->capacity - at;
    uint64_t pad = 0;
    if (need > to_end) pad = to_end;
    if (pad + need > free) return nullptr;
    if (pad) {
      auto* p = slot(at);
      p->size = static_cast<uint32_t>(pad);
      p->kind = kPadding;
      p->holders.store(0, std::memory_order_relaxed);
      p->payload_size = 0;
    }
    auto* s = slot((head + pad) % c_->capacity);
    s->size = static_cast<uint32_t>(need);
    s->kind = kMessage;
    s->holders.store(1, std::memory_order_relaxed);  // the consumer's, until it drops it
    s->payload_size = static_cast<uint32_t>(payload);
    pending_head_ = head + pad + need;
    return s->payload();
  }

  // Makes the reserved message visible. Returns true when the consumer was asleep and must
  // be woken (its eventfd written) by the caller.
  bool publish() {
    c_->head.store(pending_head_, std::memory_order_seq_cst);
    return c_->consumer_sleeping.load(std::memory_order_seq_cst) != 0 &&
           c_->consumer_sleeping.exchange(0, std::memory_order_seq_cst) != 0;
  }

  bool empty() const {  // as the producer sees it: everything released
    return c_->tail.load(std::memory_order_acquire) == c_->head.load(std::memory_order_relaxed);
  }

 private:
  SlotHeader* slot(uint64_t offset) { return reinterpret_cast<SlotHeader*>(slots_ + offset); }

  RingControl* c_ = nullptr;
  std::byte* slots_ = nullptr;
  uint64_t pending_head_ = 0;
};

class RingConsumer {
 public:
  RingConsumer(RingControl* control, std::byte* slots)
      : c_(control), slots_(slots), read_(control->tail.load(std::memory_order_acquire)), read_shared_(read_) {}
  RingConsumer(const RingConsumer&) = delete;
  RingConsumer& operator=(const RingConsumer&) = delete;

  // The next message, or nullptr when there is none yet. Padding is skipped.
  SlotHeader* next() {
    for (;;) {
      if (read_ == c_->head.load(std::memory_order_acquire)) return nullptr;
      SlotHeader* s = slot(read_ % c_->capacity);
      read_ += s->size;
      read_shared_.store(read_, std::memory_order_release);
      if (s->kind == kMessage) return s;
    }
  }

  // In-order consumers: every message read so far is done with.
  void release_all_read() { c_->tail.store(read_, std::memory_order_release); }

  // Out-of-order consumers: a message arrives with one holder (the consumer); add one per
  // extra user before handing it out, and drop one as each is done. When the last drops,
  // reclaim() moves tail over the released slots at the front. reclaim() may run on any
  // thread, concurrently with next(), but calls to it must be serialised by the caller.
  static void add_holders(SlotHeader* s, uint32_t n) { s->holders.fetch_add(n, std::memory_order_relaxed); }
  static bool drop_holder(SlotHeader* s) { return s->holders.fetch_sub(1, std::memory_order_acq_rel) == 1; }
  void reclaim() {
    const uint64_t read = read_shared_.load(std::memory_order_acquire);
    uint64_t tail = c_->tail.load(std::memory_order_relaxed);
    while (tail != read) {
      SlotHeader* s = slot(tail % c_->capacity);
      if (s->kind == kMessage && s->holders.load(std::memory_order_acquire) != 0) break;
      tail += s->size;
    }
    c_->tail.store(tail, std::memory_order_release);
  }

  // Announces sleep; returns false (and withdraws) when a message is there after all.
  bool prepare_sleep() {
    c_->consumer_sleeping.store(1, std::memory_order_seq_cst);
    if (read_ != c_->head.load(std::memory_order_seq_cst)) {
      c_->consumer_sleeping.store(0, std::memory_order_relaxed);
      return false;
    }
    return true;
  }
  void cancel_sleep() { c_->consumer_sleeping.store(0, std::memory_order_relaxed); }

  // Whether a message (or padding) is there to read: a cheap look for a consumer that polls
  // before it sleeps. The reading thread only.
  bool ready() const { return read_ != c_->head.load(std::memory_order_acquire); }

 private:
  SlotHeader* slot(uint64_t offset) { return reinterpret_cast<SlotHeader*>(slots_ + offset); }

  RingControl* c_ = nullptr;
  std::byte* slots_ = nullptr;
  uint64_t read_ = 0;                       // the reading thread's own
  std::atomic<uint64_t> read_shared_{0};    // read_, for reclaim() on other threads
};

}  // namespace loopserve::ipc
