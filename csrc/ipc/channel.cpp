#include "ipc/channel.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace loopserve::ipc {
namespace {

constexpr uint64_t kMagic = 0x6c6f6f7073727631ull;  // "loopsrv1"

[[noreturn]] void fail(const char* what) { throw std::system_error(errno, std::generic_category(), what); }

}  // namespace

std::shared_ptr<ChannelRegion> ChannelRegion::create(size_t ring_bytes) {
  std::shared_ptr<ChannelRegion> r(new ChannelRegion());
  r->ring_bytes_ = align_up(ring_bytes, kSlotAlign);
  r->size_ = kRequestControl + 2 * (kControlBytes + r->ring_bytes_);
  r->memfd_ = ::memfd_create("loopserve-channel", MFD_CLOEXEC);
  if (r->memfd_ < 0) fail("memfd_create");
  if (::ftruncate(r->memfd_, static_cast<off_t>(r->size_)) != 0) fail("ftruncate");
  void* p = ::mmap(nullptr, r->size_, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd_, 0);
  if (p == MAP_FAILED) fail("mmap");
  r->base_ = static_cast<std::byte*>(p);
  r->request_efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  r->response_efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->request_efd_ < 0 || r->response_efd_ < 0) fail("eventfd");
  // A fresh memfd reads as zeros: the atomics start at 0; placement-new makes them objects.
  auto* h = new (r->base_) ChannelHeader();
  h->magic = kMagic;
  h->ring_bytes = r->ring_bytes_;
  for (RingControl* c : {r->request_control(), r->response_control()}) {
    new (c) RingControl();
    c->capacity = r->ring_bytes_;
  }
  return r;
}

std::shared_ptr<ChannelRegion> ChannelRegion::attach(int memfd, int request_efd, int response_efd) {
  std::shared_ptr<ChannelRegion> r(new ChannelRegion());
  r->memfd_ = memfd;
  r->request_efd_ = request_efd;
  r->response_efd_ = response_efd;
  ChannelHeader probe;
  if (::pread(memfd, &probe.magic, sizeof probe.magic, 0) != sizeof probe.magic) fail("read channel header");
  if (::pread(memfd, &probe.ring_bytes, sizeof probe.ring_bytes, offsetof(ChannelHeader, ring_bytes)) !=
      sizeof probe.ring_bytes)
    fail("read channel header");
  if (probe.magic != kMagic) throw std::invalid_argument("not a loopserve channel (bad magic)");
  r->ring_bytes_ = probe.ring_bytes;
  r->size_ = kRequestControl + 2 * (kControlBytes + r->ring_bytes_);
  void* p = ::mmap(nullptr, r->size_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) fail("mmap");
  r->base_ = static_cast<std::byte*>(p);
  return r;
}

ChannelRegion::~ChannelRegion() {
  if (base_) ::munmap(base_, size_);
  for (int fd : {memfd_, request_efd_, response_efd_})
    if (fd >= 0) ::close(fd);
}

void ChannelRegion::wake(int efd) {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(efd, &one, sizeof one);
}

void ChannelRegion::clear(int efd) {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(efd, &count, sizeof count);
}

MessageLayout plan_message(size_t fixed, size_t text, const std::vector<TensorOut>& tensors) {
  MessageLayout l;
  l.text_at = fixed;
  size_t at = align_up(fixed + text, 8);
  l.tensor_at.reserve(tensors.size());
  for (const TensorOut& t : tensors) {
    l.tensor_at.push_back(at);
    at = align_up(at + sizeof(WireTensor) + 8 * t.ndim + t.name.size(), 8);
  }
  l.data_at.reserve(tensors.size());
  for (const TensorOut& t : tensors) {
    at = align_up(at, 64);
    l.data_at.push_back(at);
    at += t.nbytes;
  }
  l.size = at;
  return l;
}

void write_tensor_headers(std::byte* payload, const MessageLayout& layout, const std::vector<TensorOut>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorOut& t = tensors[i];
    WireTensor w{};
    w.offset = layout.data_at[i];
    w.nbytes = t.nbytes;
    w.dtype = static_cast<uint8_t>(t.dtype);
    w.ndim = t.ndim;
    w.name_len = static_cast<uint16_t>(t.name.size());
    std::byte* p = payload + layout.tensor_at[i];
    std::memcpy(p, &w, sizeof w);
    std::memcpy(p + sizeof w, t.shape, 8 * t.ndim);
    std::memcpy(p + sizeof w + 8 * t.ndim, t.name.data(), t.name.size());
  }
}

std::vector<TensorIn> read_tensors(const std::byte* payload, size_t payload_size, size_t after_text, size_t count) {
  std::vector<TensorIn> out;
  out.reserve(count);
  size_t at = align_up(after_text, 8);
  for (size_t i = 0; i < count; ++i) {
    WireTensor w;
    if (at + sizeof w > payload_size) throw std::invalid_argument("message ends inside a tensor description");
    std::memcpy(&w, payload + at, sizeof w);
    const size_t end = at + sizeof w + 8 * size_t{w.ndim} + w.name_len;
    if (w.ndim > kMaxDims || end > payload_size || w.dtype > static_cast<uint8_t>(DType::kBytes) ||
        w.offset > payload_size || w.nbytes > payload_size - w.offset)
      throw std::invalid_argument("malformed tensor description in message");
    TensorIn t;
    t.dtype = static_cast<DType>(w.dtype);
    t.shape.resize(w.ndim);
    std::memcpy(t.shape.data(), payload + at + sizeof w, 8 * size_t{w.ndim});
    t.name = std::string_view(reinterpret_cast<const char*>(payload + at + sizeof w + 8 * w.ndim), w.name_len);
    t.data = payload + w.offset;
    t.nbytes = w.nbytes;
    out.push_back(std::move(t));
    at = align_up(end, 8);
  }
  return out;
}

}  // namespace loopserve::ipc
