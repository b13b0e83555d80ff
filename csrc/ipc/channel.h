// One engine <-> front-end link: a shared-memory region (a memfd) holding a request ring
// (the front end produces, the engine consumes) and a response ring (the other way), plus
// the eventfd that wakes each side. The engine creates it and passes the three descriptors
// to the front-end process it starts; the front end attaches to them.
//
// Thread-safety: the region itself is immutable after creation; its rings follow the rules
// of shm_ring.h. ChannelRegion may be shared by threads of one process.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.h"
#include "ipc/shm_ring.h"

namespace loopserve::ipc {

struct ChannelHeader {
  uint64_t magic;
  uint64_t ring_bytes;
  alignas(64) std::atomic<uint32_t> engine_closed{0};  // the engine will answer nothing more
};

class ChannelRegion {
 public:
  // Engine side: a new region with two rings of `ring_bytes` each (rounded up to 64).
  static std::shared_ptr<ChannelRegion> create(size_t ring_bytes);
  // Front-end side: maps the region behind descriptors handed over by the engine. The
  // descriptors become the region's own (closed with it).
  static std::shared_ptr<ChannelRegion> attach(int memfd, int request_efd, int response_efd);
  ~ChannelRegion();
  ChannelRegion(const ChannelRegion&) = delete;
  ChannelRegion& operator=(const ChannelRegion&) = delete;

  int memfd() const { return memfd_; }
  int request_efd() const { return request_efd_; }    // the engine waits on it
  int response_efd() const { return response_efd_; }  // the front end waits on it
  ChannelHeader* header() const { return reinterpret_cast<ChannelHeader*>(base_); }
  RingControl* request_control() const { return control(kRequestControl); }
  std::byte* request_slots() const { return base_ + kRequestControl + kControlBytes; }
  RingControl* response_control() const { return control(response_control_offset()); }
  std::byte* response_slots() const { return base_ + response_control_offset() + kControlBytes; }

  static void wake(int efd);      // writes 1 to an eventfd
  static void clear(int efd);     // reads (resets) a non-blocking eventfd

 private:
  ChannelRegion() = default;
  static constexpr size_t kControlBytes = 4096;
  static constexpr size_t kRequestControl = 4096;  // after the ChannelHeader page
  size_t response_control_offset() const { return kRequestControl + kControlBytes + ring_bytes_; }
  RingControl* control(size_t offset) const { return reinterpret_cast<RingControl*>(base_ + offset); }

  std::byte* base_ = nullptr;
  size_t size_ = 0;
  size_t ring_bytes_ = 0;
  int memfd_ = -1, request_efd_ = -1, response_efd_ = -1;
};

// -- wire format: every message is a fixed header, strings, tensor descriptions, payloads --

enum RequestFlags : uint8_t {
  kRawInput = 1,  // one unnamed input, shape derived from the model's only input and its size
};

struct WireRequest {
  uint64_t token;  // the front end's own id for the request
  int64_t timeout_us;
  int32_t priority;
  uint16_t model_len, version_len, key_len, id_len, group_len;  // strings, in this order
  uint8_t n_tensors;
  uint8_t flags;
  uint8_t reserved[4];
};

struct WireResponse {
  uint64_t token;
  int64_t version;    // the version that answered; 0 when none did
  uint16_t status;    // HTTP status
  uint8_t n_tensors;
  uint8_t reserved;
  uint32_t text_len;  // status != 200: the error message; 200: the request id, if any
};

struct WireTensor {
  uint64_t offset;  // of its data, from the start of the message payload (64-byte aligned)
  uint64_t nbytes;
  uint8_t dtype;
  uint8_t ndim;
  uint16_t name_len;
  uint32_t reserved;
  // followed by int64_t shape[ndim] and the name, padded to 8
};

constexpr uint8_t kMaxDims = 64;
constexpr size_t kMaxTensors = 255;
constexpr size_t kMaxWireString = 65535;  // the 16-bit length fields

// A tensor as the message writer describes it before laying it out.
struct TensorOut {
  std::string_view name;
  DType dtype;
  const int64_t* shape;
  uint8_t ndim;
  size_t nbytes;
};

// Where things go inside a message: computed once, then written with write_message().
struct MessageLayout {
  size_t size = 0;                  // whole payload
  size_t text_at = 0;               // strings, packed, after the fixed header
  std::vector<size_t> tensor_at;    // each WireTensor
  std::vector<size_t> data_at;      // each tensor's data
};

// `fixed` is sizeof(WireRequest) or sizeof(WireResponse); `text` the bytes of its strings.
MessageLayout plan_message(size_t fixed, size_t text, const std::vector<TensorOut>& tensors);
// Writes the tensor descriptions (not their data) into `payload`.
void write_tensor_headers(std::byte* payload, const MessageLayout& layout, const std::vector<TensorOut>& tensors);

// A tensor as the message reader sees it; pointers into the message. Throws
// std::invalid_argument when the message is malformed (never trusted blindly).
struct TensorIn {
  std::string_view name;
  DType dtype;
  std::vector<int64_t> shape;
  const std::byte* data;
  size_t nbytes;
};
std::vector<TensorIn> read_tensors(const std::byte* payload, size_t payload_size, size_t after_text, size_t count);

}  // namespace loopserve::ipc
