// Python bindings of the multi-process data plane: the front end's channel, and the
// engine's router, ingress and feedback tap. They convert, release the GIL where a call may
// wait, and call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ipc/channel.h"
#include "py_batcher.h"
#include "py_executor.h"
#include "serving/feedback_tap.h"
#include "serving/ingress.h"
#include "serving/route_table.h"

namespace py = pybind11;

namespace loopserve {
namespace {

using ipc::ChannelRegion;

py::array copy_tensor(DType dtype, const std::vector<int64_t>& shape, const std::byte* data, size_t nbytes) {
  if (dtype == DType::kBytes) return bytes_to_array(data, nbytes, shape);
  py::array out(numpy_dtype(dtype), shape);
  if (static_cast<size_t>(out.nbytes()) != nbytes) throw std::runtime_error("tensor size does not match its shape");
  std::memcpy(out.mutable_data(), data, nbytes);
  return out;
}

void check_wire_length(const char* what, size_t n) {
  if (n > ipc::kMaxWireString)
    throw std::invalid_argument(std::string(what) + " is " + std::to_string(n) + " bytes long; at most " +
                                std::to_string(ipc::kMaxWireString) + " are accepted");
}

// The front end's end of a channel: submits requests, drains responses. Thread-safety:
// one thread (the front end's event loop).
class FrontendChannel {
 public:
  enum Submit { kSent = 0, kFull = 1, kTooLarge = 2 };

  FrontendChannel(int memfd, int request_efd, int response_efd)
      : region_(ChannelRegion::attach(memfd, request_efd, response_efd)),
        requests_(region_->request_control(), region_->request_slots()),
        responses_(region_->response_control(), region_->response_slots()) {}

  // defer_wake: an engine that sleeps is woken by the next flush() rather than at once, so a
  // loop turn's requests cost one wake-up (and the ingress takes them in one round).
  int submit(uint64_t token, const std::string& model, const std::string& version, const std::string& key,
             const std::string& id, const std::string& group, int priority, int64_t timeout_us, bool raw,
             const py::list& inputs, bool defer_wake) {
    if (inputs.size() > ipc::kMaxTensors)
      throw std::invalid_argument("the request has " + std::to_string(inputs.size()) + " inputs; at most " +
                                  std::to_string(ipc::kMaxTensors) + " are accepted");
    // The message's length fields are 16 bits: a longer string would wrap and shift the layout.
    const std::pair<const char*, const std::string*> fields[] = {
        {"the model name", &model}, {"the version", &version}, {"parameters.routing_key", &key},
        {"the request id", &id}, {"parameters.group", &group}};
    for (const auto& [what, s] : fields) check_wire_length(what, s->size());
    std::vector<std::string> names;
    std::vector<py::array> arrays;
    std::vector<Buffer> serialized;  // BYTES inputs in wire form
    std::vector<ipc::TensorOut> tensors;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<const std::byte*> sources;
    names.reserve(inputs.size());
    arrays.reserve(inputs.size());
    shapes.reserve(inputs.size());
    serialized.reserve(inputs.size());
    for (auto item : inputs) {
      auto pair = item.cast<py::tuple>();
      names.push_back(pair[0].cast<std::string>());
      check_wire_length("an input's name", names.back().size());
      arrays.push_back(pair[1].cast<py::array>());
      const py::array& a = arrays.back();
      if (a.ndim() > ipc::kMaxDims) throw std::invalid_argument("input '" + names.back() + "' has too many dimensions");
      shapes.emplace_back(a.shape(), a.shape() + a.ndim());
      DType dtype = dtype_of(a.dtype());
      const std::byte* data;
      size_t nbytes;
      if (dtype == DType::kBytes) {
        serialized.push_back(array_to_bytes(a));
        data = serialized.back().data();
        nbytes = serialized.back().size();
      } else {
        if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("input '" + names.back() + "' must be C-contiguous");
        data = static_cast<const std::byte*>(a.data());
        nbytes = static_cast<size_t>(a.nbytes());
      }
      sources.push_back(data);
      tensors.push_back({names.back(), dtype, shapes.back().data(), static_cast<uint8_t>(a.ndim()), nbytes});
    }
    const size_t text = model.size() + version.size() + key.size() + id.size() + group.size();
    ipc::MessageLayout layout = ipc::plan_message(sizeof(ipc::WireRequest), text, tensors);
    if (layout.size > requests_.max_payload()) return kTooLarge;
    std::byte* payload = requests_.reserve(layout.size);
    if (payload == nullptr) return kFull;
    ipc::WireRequest w{};
    w.token = token;
    w.timeout_us = timeout_us;
    w.priority = priority;
    w.model_len = static_cast<uint16_t>(model.size());
    w.version_len = static_cast<uint16_t>(version.size());
    w.key_len = static_cast<uint16_t>(key.size());
    w.id_len = static_cast<uint16_t>(id.size());
    w.group_len = static_cast<uint16_t>(group.size());
    w.n_tensors = static_cast<uint8_t>(tensors.size());
    w.flags = raw ? ipc::kRawInput : 0;
    std::memcpy(payload, &w, sizeof w);
    std::byte* at = payload + layout.text_at;
    for (const std::string* s : {&model, &version, &key, &id, &group}) {
      std::memcpy(at, s->data(), s->size());
      at += s->size();
    }
    ipc::write_tensor_headers(payload, layout, tensors);
    size_t total = 0;
    for (const auto& t : tensors) total += t.nbytes;
    {
      std::unique_ptr<py::gil_scoped_release> release;
      if (total > (1u << 20)) release = std::make_unique<py::gil_scoped_release>();  // big bodies: let others run
      for (size_t i = 0; i < tensors.size(); ++i) std::memcpy(payload + layout.data_at[i], sources[i], tensors[i].nbytes);
    }
    if (requests_.publish()) {
      if (defer_wake)
        wake_pending_ = true;
      else
        ChannelRegion::wake(region_->request_efd());
    }
    return kSent;
  }

  // Wakes the engine if a deferred submit found it asleep; true when it did.
  bool flush() {
    if (!wake_pending_) return false;
    wake_pending_ = false;
    ChannelRegion::wake(region_->request_efd());
    return true;
  }

  // [(token, status, version, text, {name: array} or None)] for every response there.
  py::list drain() {
    ChannelRegion::clear(region_->response_efd());
    py::list out;
    while (ipc::SlotHeader* slot = responses_.next()) {
      const std::byte* p = slot->payload();
      const size_t size = slot->payload_size;
      ipc::WireResponse w;
      std::memcpy(&w, p, sizeof w);
      std::string text(reinterpret_cast<const char*>(p + sizeof w), w.text_len);
      py::object outputs = py::none();
      if (w.status == 200) {
        py::dict d;
        for (auto& t : ipc::read_tensors(p, size, sizeof w + w.text_len, w.n_tensors))
          d[py::str(std::string(t.name))] = copy_tensor(t.dtype, t.shape, t.data, t.nbytes);
        outputs = std::move(d);
      }
      out.append(py::make_tuple(w.token, w.status, w.version, std::move(text), std::move(outputs)));
    }
    responses_.release_all_read();
    return out;
  }

  bool prepare_sleep() { return responses_.prepare_sleep(); }

  // Polls the response ring for up to `us` microseconds, GIL released, yielding the core
  // between looks; true when a response is there. For a front end with a lone client: the
  // engine answers a quick model in less time than a halted core takes to wake up again.
  // False at once when a yield shows another thread wanted the core (ipc::kYieldContended).
  bool spin(int64_t us) {
    if (responses_.ready()) return true;
    py::gil_scoped_release release;
    using Clock = std::chrono::steady_clock;
    auto now = Clock::now();
    const auto until = now + std::chrono::microseconds(std::clamp<int64_t>(us, 0, ipc::kMaxSpinUs));
    do {
      std::this_thread::yield();
      const auto before = now;
      now = Clock::now();
      // Contention first: an answer found after this thread was off its core for long is no
      // catch (the window would reopen in full on a busy box).
      if (now - before > ipc::kYieldContended) return false;
      if (responses_.ready()) return true;
    } while (now < until);
    return false;
  }

  int fd() const { return region_->response_efd(); }
  size_t max_payload() const { return requests_.max_payload(); }

 private:
  std::shared_ptr<ChannelRegion> region_;
  ipc::RingProducer requests_;
  ipc::RingConsumer responses_;
  bool wake_pending_ = false;  // a deferred submit found the engine asleep: flush() wakes it
};

// A channel as the engine hands it out: its descriptors go to the front end.
struct ChannelHandle {
  std::shared_ptr<ChannelRegion> region;
};

py::array tap_column(const FeedbackTap::Column& c) {
  return copy_tensor(c.dtype, c.shape, reinterpret_cast<const std::byte*>(c.data.data()), c.data.size());
}

// [text[ends[i-1], ends[i])]: the strings a feedback block stores end to end.
py::list split_text(const std::string& text, const std::vector<size_t>& ends) {
  py::list out;
  size_t begin = 0;
  for (size_t end : ends) {
    out.append(py::str(text.data() + begin, end - begin));
    begin = end;
  }
  return out;
}

template <class T>
py::array_t<T> numpy_of(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace

void bind_ipc(py::module_& m) {
  py::class_<FrontendChannel>(m, "FrontendChannel")
      .def(py::init<int, int, int>(), py::arg("memfd"), py::arg("request_efd"), py::arg("response_efd"))
      .def("submit", &FrontendChannel::submit, py::arg("token"), py::arg("model"), py::arg("version"),
           py::arg("key"), py::arg("id"), py::arg("group"), py::arg("priority"), py::arg("timeout_us"),
           py::arg("raw"), py::arg("inputs"), py::arg("defer_wake") = false,
           "Sends one request: 0 sent, 1 the channel is full now, 2 the request is over the channel's size; "
           "with defer_wake, a sleeping engine is woken by the next flush()")
      .def("flush", &FrontendChannel::flush, "Wakes the engine if a deferred submit found it asleep")
      .def("drain", &FrontendChannel::drain)
      .def("spin", &FrontendChannel::spin, py::arg("us"),
           "Polls the response ring up to `us` µs (GIL released); True when a response is there")
      .def("prepare_sleep", &FrontendChannel::prepare_sleep,
           "Announces that the caller waits on fd; False when a response is there already")
      .def_property_readonly("fd", &FrontendChannel::fd)
      .def_property_readonly("max_payload", &FrontendChannel::max_payload);

  py::class_<ChannelHandle>(m, "ChannelHandle")
      .def_property_readonly("memfd", [](const ChannelHandle& h) { return h.region->memfd(); })
      .def_property_readonly("request_efd", [](const ChannelHandle& h) { return h.region->request_efd(); })
      .def_property_readonly("response_efd", [](const ChannelHandle& h) { return h.region->response_efd(); });

  py::class_<FeedbackTap, std::shared_ptr<FeedbackTap>>(m, "FeedbackTap")
      .def(py::init<size_t, std::vector<size_t>, size_t, size_t>(), py::arg("output"), py::arg("inputs"),
           py::arg("capacity") = 65536, py::arg("max_bytes") = size_t{64} << 20)
      .def("drain_blocks",
           [](FeedbackTap& tap) {
             std::vector<FeedbackTap::Block> blocks;
             {
               py::gil_scoped_release release;
               blocks = tap.drain_blocks();
             }
             py::list out;
             for (const auto& b : blocks) {
               py::list x, x_rows;
               for (const auto& c : b.x) {
                 x.append(tap_column(c));
                 x_rows.append(numpy_of(c.rows));
               }
               out.append(py::make_tuple(split_text(b.ids, b.id_ends), split_text(b.groups, b.group_ends),
                                         numpy_of(b.times), tap_column(b.y), numpy_of(b.y.rows), x, x_rows));
             }
             return out;
           },
           "The predictions recorded since the last drain, as blocks of consecutive requests whose tensors stack: "
           "[(ids, group JSONs, times, y, y rows per request, [inputs], [input rows per request])]")
      .def("take_dropped", &FeedbackTap::take_dropped, "Predictions dropped (the tap was full) since the last call");

  py::class_<Router, std::shared_ptr<Router>>(m, "Router")
      .def(py::init<>())
      .def(
          "set_model",
          [](Router& r, const std::string& name, const py::list& loaded, const py::list& answering,
             const std::vector<int64_t>& shadows) {
            auto route = std::make_shared<ModelRoute>();
            route->name = name;
            for (auto item : loaded) {
              auto t = item.cast<py::tuple>();
              auto v = std::make_shared<VersionRoute>();
              v->version = t[0].cast<int64_t>();
              v->batcher = t[1].cast<PyBatcher&>().shared();
              if (!t[2].is_none()) v->feedback = t[2].cast<std::shared_ptr<FeedbackTap>>();
              route->loaded.push_back(std::move(v));
            }
            auto by_version = [&](int64_t version) {
              for (const auto& v : route->loaded)
                if (v->version == version) return v;
              throw std::invalid_argument("version " + std::to_string(version) + " is not loaded");
            };
            for (auto item : answering) {
              auto t = item.cast<py::tuple>();
              route->answering.emplace_back(t[0].cast<double>(), by_version(t[1].cast<int64_t>()));
            }
            for (int64_t v : shadows) route->shadows.push_back(by_version(v));
            r.set_model(std::move(route));
          },
          py::arg("name"), py::arg("loaded"), py::arg("answering"), py::arg("shadows"),
          "loaded: [(version, Batcher, FeedbackTap or None)]; answering: [(upper bound, version)]")
      .def("remove_model", &Router::remove_model, py::arg("name"))
      .def("wait_quiescent", &Router::wait_quiescent, py::call_guard<py::gil_scoped_release>());

  py::class_<Ingress>(m, "Ingress")
      .def(py::init<std::shared_ptr<Router>, int64_t>(), py::arg("router"), py::arg("spin_us") = 0)
      .def("open_channel",
           [](Ingress& ingress, size_t ring_bytes) { return ChannelHandle{ingress.open_channel(ring_bytes)}; },
           py::arg("ring_bytes"))
      .def("close_channel", [](Ingress& ingress, const ChannelHandle& h) { ingress.close_channel(h.region); })
      .def("stop", &Ingress::stop, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const Ingress& ingress) {
        IngressStats s = ingress.stats();
        py::dict d;
        d["requests"] = s.requests;
        d["refused"] = s.refused;
        d["responses_dropped"] = s.responses_dropped;
        d["rounds"] = s.rounds;
        d["sleeps"] = s.sleeps;
        d["spins"] = s.spins;
        d["spin_window_us"] = s.spin_window_us;
        return d;
      });
}

}  // namespace loopserve
