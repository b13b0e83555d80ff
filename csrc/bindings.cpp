// Python bindings of the native core: they convert, release the GIL where a call may wait,
// and call. No logic of their own.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "batcher.h"
#include "bytes_tensor.h"
#include "completion.h"
#include "executor.h"
#include "py_batcher.h"
#include "py_executor.h"
#include "batch_observer.h"
#include "sketches/kll_sketch.h"
#include "sketches/moments_sketch.h"

namespace py = pybind11;

namespace loopserve {
void bind_drift(py::module_& m);  // bindings_drift.cpp
void bind_ipc(py::module_& m);    // bindings_ipc.cpp
void bind_http(py::module_& m);   // bindings_http.cpp
}
using namespace loopserve;

namespace {

DType parse_dtype(const std::string& name) {
  if (auto t = dtype_from_name(name)) return *t;
  throw std::invalid_argument("unknown datatype '" + name + "'");
}

// Maps {name: array} onto the model's declared input order, with clear errors for names
// that do not belong and inputs that are missing.
std::vector<InputView> input_views(const BatcherConfig& config, const py::dict& inputs) {
  const auto& specs = config.inputs;
  std::vector<InputView> views(specs.size());
  std::vector<bool> seen(specs.size(), false);
  for (auto item : inputs) {
    const std::string name = py::str(item.first);
    size_t i = 0;
    while (i < specs.size() && specs[i].name != name) ++i;
    if (i == specs.size()) {
      std::string known;
      for (const auto& s : specs) known += (known.empty() ? "'" : ", '") + s.name + "'";
      throw InvalidInput("model '" + config.model_name + "' has no input '" + name + "' (its inputs: " + known + ")");
    }
    if (!py::isinstance<py::array>(item.second))
      throw InvalidInput("input '" + name + "' must be a numpy array");
    auto arr = py::reinterpret_borrow<py::array>(item.second);
    InputView& view = views[i];
    try {
      view.dtype = dtype_of(arr.dtype());
      view.shape.assign(arr.shape(), arr.shape() + arr.ndim());
      if (view.dtype == DType::kBytes) {  // serialized here, so the request owns it
        auto storage = std::make_shared<const Buffer>(array_to_bytes(arr));
        view.data = storage->data();
        view.nbytes = storage->size();
        view.storage = std::move(storage);
        seen[i] = true;
        continue;
      }
    } catch (const std::invalid_argument& e) {
      throw InvalidInput("input '" + name + "': " + e.what());
    }
    if (!(arr.flags() & py::array::c_style))
      throw InvalidInput("input '" + name + "' must be C-contiguous");
    view.data = static_cast<const std::byte*>(arr.data());
    view.nbytes = static_cast<size_t>(arr.nbytes());
    seen[i] = true;
  }
  for (size_t i = 0; i < specs.size(); ++i)
    if (!seen[i]) throw InvalidInput("model '" + config.model_name + "' needs input '" + specs[i].name + "'");
  return views;
}

// The outputs of one completed request as numpy arrays viewing the batch's result, which
// a capsule keeps alive for as long as any of them lives.
py::tuple output_arrays(const Completion& c) {
  const auto& outputs = c.result->outputs;
  auto keep = std::make_unique<std::shared_ptr<const BatchResult>>(c.result);
  py::capsule base(keep.get(), [](void* p) {
    std::unique_ptr<std::shared_ptr<const BatchResult>>(static_cast<std::shared_ptr<const BatchResult>*>(p));
  });
  keep.release();  // owned by the capsule now
  py::tuple arrays(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const OutputTensor& o = outputs[i];
    std::vector<int64_t> shape = o.shape;
    const std::byte* data = o.data.data();
    if (o.dtype == DType::kBytes) {  // variable-size elements: find this request's rows
      size_t begin = 0, end = o.data.size();
      if (!c.whole) {
        const int64_t per_row = element_count(o.shape) / o.shape[0];
        begin = bytes_element_offset(data, o.data.size(), c.row_begin * per_row);
        end = begin + bytes_element_offset(data + begin, o.data.size() - begin, c.rows * per_row);
        shape[0] = c.rows;
      }
      arrays[i] = bytes_to_array(data + begin, end - begin, shape);
      continue;
    }
    if (!c.whole) {
      const size_t row_bytes = o.data.size() / static_cast<size_t>(o.shape[0]);
      data += static_cast<size_t>(c.row_begin) * row_bytes;
      shape[0] = c.rows;
    }
    arrays[i] = py::array(numpy_dtype(o.dtype), shape, data, base);
  }
  return arrays;
}

// (token, status, payload): payload is the outputs tuple when ok, else the error message.
py::tuple completion_tuple(const Completion& c) {
  if (c.status == Status::kOk)
    return py::make_tuple(c.token, static_cast<int>(c.status), output_arrays(c));
  return py::make_tuple(c.token, static_cast<int>(c.status), c.error ? *c.error : std::string());
}

py::dict stats_dict(const BatcherStats& s) {
  py::dict d;
  d["success"] = s.success;
  d["failed"] = s.failed;
  d["timed_out"] = s.timed_out;
  d["rejected"] = s.rejected;
  d["inference_count"] = s.inference_count;
  d["execution_count"] = s.execution_count;
  d["queue_ns"] = s.queue_ns;
  d["compute_input_ns"] = s.compute_input_ns;
  d["compute_infer_ns"] = s.compute_infer_ns;
  d["compute_output_ns"] = s.compute_output_ns;
  d["success_ns"] = s.success_ns;
  d["failed_ns"] = s.failed_ns;
  d["inline_runs"] = s.inline_runs;
  d["delayed_batches"] = s.delayed_batches;
  d["queued"] = s.queued;
  d["last_inference_ms"] = s.last_inference_ms;
  py::dict by_size;
  for (size_t n = 0; n < s.by_batch_size.size(); ++n) {
    const BatchSizeStats& b = s.by_batch_size[n];
    if (b.count == 0) continue;
    py::dict e;
    e["count"] = b.count;
    e["compute_input_ns"] = b.compute_input_ns;
    e["compute_infer_ns"] = b.compute_infer_ns;
    e["compute_output_ns"] = b.compute_output_ns;
    by_size[py::int_(n)] = e;
  }
  d["by_batch_size"] = by_size;
  return d;
}

// Counts completions; the native benchmark's sink. Thread-safe.
class CountingSink final : public CompletionSink {
 public:
  void deliver(std::vector<Completion>&& items) override { done.fetch_add(items.size()); }
  std::atomic<uint64_t> done{0};
};

// Submits `requests_per_thread` requests of `rows` rows from each of `threads` native
// threads to an echo batcher and returns the seconds until all completed: the batcher's
// own cost, with no Python and no model.
double measure_native(BatcherConfig config, int threads, int requests_per_thread, int rows) {
  py::gil_scoped_release release;
  config.inputs = {TensorSpec{"x", DType::kFP32, {4}}};
  config.outputs = {TensorSpec{"x", DType::kFP32, {4}}};
  Batcher batcher(config, std::make_shared<EchoExecutor>());
  auto sink = std::make_shared<CountingSink>();
  std::vector<float> data(static_cast<size_t>(rows) * 4, 1.0f);
  const uint64_t total = static_cast<uint64_t>(threads) * static_cast<uint64_t>(requests_per_thread);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> submitters;
  for (int t = 0; t < threads; ++t)
    submitters.emplace_back([&] {
      for (int i = 0; i < requests_per_thread; ++i) {
        for (;;) {
          try {
            batcher.submit({InputView(DType::kFP32, data.data(), {rows, 4})},
                           static_cast<uint64_t>(i), sink);
            break;
          } catch (const QueueFull&) {
            std::this_thread::yield();
          }
        }
      }
    });
  for (auto& t : submitters) t.join();
  while (sink->done.load() < total) std::this_thread::yield();
  const auto end = std::chrono::steady_clock::now();
  batcher.stop();
  return std::chrono::duration<double>(end - start).count();
}

// Feeds every value of a float array to a sketch, with the GIL released.
template <typename Sketch>
void update_from(Sketch& sketch, py::array_t<double, py::array::c_style | py::array::forcecast> values) {
  const double* p = values.data();
  const auto n = static_cast<size_t>(values.size());
  py::gil_scoped_release release;
  if constexpr (std::is_same_v<Sketch, sketches::KllSketch>) {
    sketch.update(p, n);  // the batch path: copies runs of values between compactions
  } else {
    for (size_t i = 0; i < n; ++i) sketch.update(p[i]);
  }
}

template <typename Sketch>
py::bytes serialized(const Sketch& sketch) {
  const std::vector<uint8_t> bytes = sketch.serialize();
  return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

template <typename Sketch>
Sketch deserialized(const py::bytes& data) {
  const std::string_view view = data;
  return Sketch::deserialize(reinterpret_cast<const uint8_t*>(view.data()), view.size());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "loopserve's native core: the dynamic batcher and its completion queues";

  static py::exception<std::runtime_error> base(m, "LoopserveError");
  py::register_exception<InvalidInput>(m, "InvalidInput", base.ptr());
  py::register_exception<QueueFull>(m, "QueueFull", base.ptr());
  py::register_exception<Unavailable>(m, "Unavailable", base.ptr());

  m.attr("STATUS_OK") = static_cast<int>(Status::kOk);
  m.attr("STATUS_TIMED_OUT") = static_cast<int>(Status::kTimedOut);
  m.attr("STATUS_MODEL_ERROR") = static_cast<int>(Status::kModelError);
  m.attr("STATUS_UNAVAILABLE") = static_cast<int>(Status::kUnavailable);
  m.attr("SUBMIT_QUEUED") = static_cast<int>(Batcher::Submitted::kQueued);
  m.attr("SUBMIT_RAN") = static_cast<int>(Batcher::Submitted::kRan);
  m.attr("SUBMIT_DEFERRED") = static_cast<int>(Batcher::Submitted::kDeferred);
  py::list names;
  for (DType t : kAllDTypes) names.append(std::string(dtype_name(t)));
  m.attr("DATATYPES") = names;

  py::class_<TensorSpec>(m, "TensorSpec")
      .def(py::init([](std::string name, const std::string& datatype, std::vector<int64_t> dims) {
             return TensorSpec{std::move(name), parse_dtype(datatype), std::move(dims)};
           }),
           py::arg("name"), py::arg("datatype"), py::arg("dims"))
      .def_readonly("name", &TensorSpec::name)
      .def_property_readonly("datatype", [](const TensorSpec& t) { return std::string(dtype_name(t.dtype)); })
      .def_readonly("dims", &TensorSpec::dims);

  py::class_<BatcherConfig>(m, "BatcherConfig")
      .def(py::init<>())
      .def_readwrite("model_name", &BatcherConfig::model_name)
      .def_readwrite("inputs", &BatcherConfig::inputs)
      .def_readwrite("outputs", &BatcherConfig::outputs)
      .def_readwrite("max_batch_size", &BatcherConfig::max_batch_size)
      .def_readwrite("preferred_batch_sizes", &BatcherConfig::preferred_batch_sizes)
      .def_readwrite("max_queue_delay_us", &BatcherConfig::max_queue_delay_us)
      .def_readwrite("adaptive_queue_delay", &BatcherConfig::adaptive_queue_delay)
      .def_readwrite("queue_capacity", &BatcherConfig::queue_capacity)
      .def_readwrite("max_queue_wait_us", &BatcherConfig::max_queue_wait_us)
      .def_readwrite("default_timeout_us", &BatcherConfig::default_timeout_us)
      .def_readwrite("priority_levels", &BatcherConfig::priority_levels)
      .def_readwrite("default_priority_level", &BatcherConfig::default_priority_level)
      .def_readwrite("instances", &BatcherConfig::instances)
      .def_readwrite("inline_budget_us", &BatcherConfig::inline_budget_us);

  py::class_<Executor, std::shared_ptr<Executor>>(m, "Executor");
  py::class_<EchoExecutor, Executor, std::shared_ptr<EchoExecutor>>(m, "EchoExecutor").def(py::init<>());
  py::class_<PyExecutor, Executor, std::shared_ptr<PyExecutor>>(m, "PyExecutor")
      .def(py::init<py::object, const std::vector<TensorSpec>&, const std::vector<TensorSpec>&,
                    std::vector<std::vector<std::pair<uintptr_t, size_t>>>, bool>(),
           py::arg("fn"), py::arg("inputs"), py::arg("outputs"),
           py::arg("staging") = std::vector<std::vector<std::pair<uintptr_t, size_t>>>{},
           py::arg("pass_instance") = false);

  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init<>())
      .def_property_readonly("fd", &CompletionQueue::fd)
      .def("drain", [](CompletionQueue& q) {
        std::vector<Completion> items = q.drain();
        py::list out(items.size());
        for (size_t i = 0; i < items.size(); ++i) out[i] = completion_tuple(items[i]);
        return out;
      });

  py::class_<PyBatcher>(m, "Batcher")
      .def(py::init<BatcherConfig, std::shared_ptr<Executor>>(), py::arg("config"), py::arg("executor"))
      .def(
          "submit",
          [](PyBatcher& self, const py::dict& inputs, uint64_t token, std::shared_ptr<CompletionQueue> queue,
             int priority, int64_t timeout_us, bool defer_inline) {
            Batcher& b = self.get();
            auto mode = defer_inline ? Batcher::Inline::kDeferred : Batcher::Inline::kNow;
            CompletionQueue& q = *queue;
            // A request that runs right here is drained by the caller at once: no wake-up.
            q.set_quiet(true);
            Batcher::Submitted done;
            try {
              done = b.submit(input_views(b.config(), inputs), token, std::move(queue), priority, timeout_us, mode);
            } catch (...) {
              q.set_quiet(false, true);
              throw;
            }
            q.set_quiet(false, done != Batcher::Submitted::kRan);
            return static_cast<int>(done);
          },
          py::arg("inputs"), py::arg("token"), py::arg("queue"), py::arg("priority") = 0,
          py::arg("timeout_us") = -1, py::arg("defer_inline") = false,
          "Queues a request; returns SUBMIT_QUEUED, SUBMIT_RAN (already complete: drain `queue` now) or "
          "SUBMIT_DEFERRED (call run_deferred() soon)")
      .def(
          "run_deferred",
          [](PyBatcher& self, CompletionQueue& queue) {
            queue.set_quiet(true);  // the caller drains `queue` right after
            self.get().run_deferred();
            queue.set_quiet(false);
          },
          py::arg("queue"),
          "Runs what is queued as one batch on this thread (after a SUBMIT_DEFERRED); then drain `queue`")
      .def(
          "infer_sync",
          [](PyBatcher& self, const py::dict& inputs, int priority, int64_t timeout_us) {
            Batcher& b = self.get();
            auto sink = std::make_shared<WaitSink>();
            b.submit(input_views(b.config(), inputs), 0, sink, priority, timeout_us);
            Completion c;
            {
              py::gil_scoped_release release;
              c = sink->wait();
            }
            return completion_tuple(c);
          },
          py::arg("inputs"), py::arg("priority") = 0, py::arg("timeout_us") = -1)
      .def("stop", [](PyBatcher& self) {
        py::gil_scoped_release release;
        self.get().stop();
      })
      .def(
          "release_executor",
          [](PyBatcher& self) { self.get().release_executor(); },  // destroyed here, GIL held
          "After stop(): drops the batcher's reference to the model, so its memory can go")
      .def(
          "set_observer",
          [](PyBatcher& self, std::shared_ptr<BatchObserver> observer) { self.get().set_observer(std::move(observer)); },
          py::arg("observer").none(true), "Shows every successful batch to `observer` (a DriftMonitor), or to none")
      .def("stats", [](PyBatcher& self) { return stats_dict(self.get().stats()); })
      .def_property_readonly("config", [](PyBatcher& self) { return self.get().config(); });

  using sketches::KllSketch;
  using sketches::MomentsSketch;
  py::class_<MomentsSketch>(m, "MomentsSketch", "Streaming count, mean, variance, min, max and NaNs; mergeable")
      .def(py::init<>())
      .def("update", &update_from<MomentsSketch>, py::arg("values"))
      .def("merge", &MomentsSketch::merge, py::arg("other"))
      .def_property_readonly("count", &MomentsSketch::count)
      .def_property_readonly("missing", &MomentsSketch::missing)
      .def_property_readonly("mean", &MomentsSketch::mean)
      .def_property_readonly("variance", &MomentsSketch::variance)
      .def_property_readonly("min", &MomentsSketch::min)
      .def_property_readonly("max", &MomentsSketch::max)
      .def("serialize", &serialized<MomentsSketch>)
      .def_static("deserialize", &deserialized<MomentsSketch>, py::arg("data"));

  py::class_<KllSketch>(m, "KllSketch", "KLL quantile sketch: approximate ranks and quantiles; mergeable")
      .def(py::init<uint16_t, uint64_t>(), py::arg("k") = KllSketch::kDefaultK,
           py::arg("seed") = 0x9E3779B97F4A7C15ull)
      .def("update", &update_from<KllSketch>, py::arg("values"))
      .def("merge", &KllSketch::merge, py::arg("other"))
      .def_property_readonly("count", &KllSketch::count)
      .def_property_readonly("k", &KllSketch::k)
      .def_property_readonly("retained", &KllSketch::retained)
      .def_property_readonly("min", &KllSketch::min)
      .def_property_readonly("max", &KllSketch::max)
      .def("rank", &KllSketch::rank, py::arg("value"))
      .def("quantile", &KllSketch::quantile, py::arg("q"))
      .def(
          "sorted_view",
          [](const KllSketch& s) {
            const auto items = s.sorted_view();
            py::array_t<double> values(static_cast<py::ssize_t>(items.size()));
            py::array_t<uint64_t> weights(static_cast<py::ssize_t>(items.size()));
            auto v = values.mutable_unchecked<1>();
            auto w = weights.mutable_unchecked<1>();
            for (size_t i = 0; i < items.size(); ++i) {
              v(static_cast<py::ssize_t>(i)) = items[i].first;
              w(static_cast<py::ssize_t>(i)) = items[i].second;
            }
            return py::make_tuple(values, weights);
          },
          "(values, weights): the retained items, sorted, with their weights")
      .def_static("normalized_rank_error", &KllSketch::normalized_rank_error, py::arg("k"))
      .def("serialize", &serialized<KllSketch>)
      .def_static("deserialize", &deserialized<KllSketch>, py::arg("data"));

  py::class_<BatchObserver, std::shared_ptr<BatchObserver>>(m, "BatchObserver");
  bind_drift(m);
  bind_ipc(m);
  bind_http(m);

  m.def("measure_native", &measure_native, py::arg("config"), py::arg("threads"), py::arg("requests_per_thread"),
        py::arg("rows"));
}
