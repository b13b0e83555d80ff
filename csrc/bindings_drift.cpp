// Python bindings of the drift accumulators and monitor (loopserve._core).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "drift/accumulator.h"
#include "drift/monitor.h"

namespace py = pybind11;

namespace loopserve {

namespace {

using drift::AccumulatorSpec;
using drift::DriftMonitor;
using drift::TensorAccumulator;

// numeric: [(column, edges)], categorical: [(column, slots, lut)]
std::shared_ptr<const AccumulatorSpec> make_spec(const std::vector<std::pair<int64_t, std::vector<double>>>& numeric,
                                                 const std::vector<std::tuple<int64_t, uint32_t, std::vector<int32_t>>>& categorical,
                                                 uint32_t kll_every, uint16_t kll_k) {
  auto spec = std::make_shared<AccumulatorSpec>();
  for (const auto& [column, edges] : numeric) spec->numeric.push_back({column, edges});
  for (const auto& [column, slots, lut] : categorical) spec->categorical.push_back({column, slots, lut});
  spec->kll_every = kll_every;
  spec->kll_k = kll_k;
  return spec;
}

// A C-contiguous 2-D (or 1-D: one column) array's dtype, data, rows and columns.
struct Table {
  DType dtype;
  const void* data;
  int64_t rows, cols;
};

Table table_of(const py::array& a) {
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("drift: expected a C-contiguous array");
  if (a.ndim() < 1) throw std::invalid_argument("drift: expected an array of rows");
  DType dtype;
  const char kind = a.dtype().kind();
  const auto size = a.dtype().itemsize();
  if (kind == 'f' && size == 4) dtype = DType::kFP32;
  else if (kind == 'f' && size == 8) dtype = DType::kFP64;
  else if (kind == 'i' && size == 4) dtype = DType::kInt32;
  else if (kind == 'i' && size == 8) dtype = DType::kInt64;
  else throw std::invalid_argument("drift: expected float32, float64, int32 or int64 values, got " +
                                   std::string(py::str(a.dtype())));
  int64_t cols = 1;
  for (py::ssize_t i = 1; i < a.ndim(); ++i) cols *= a.shape(i);
  return {dtype, a.data(), static_cast<int64_t>(a.shape(0)), cols};
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  return py::array_t<T>(static_cast<py::ssize_t>(v.size()), v.data());
}

py::bytes to_bytes(const std::vector<uint8_t>& bytes) {
  return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

py::dict window_dict(const drift::Window& w) {
  py::dict d;
  d["start"] = w.start_unix;
  d["end"] = w.end_unix;
  d["closed"] = w.closed;
  d["inputs"] = w.inputs;
  d["outputs"] = w.outputs ? py::cast(*w.outputs) : py::none();
  return d;
}

}  // namespace

void bind_drift(py::module_& m) {
  py::class_<TensorAccumulator>(m, "TensorAccumulator",
                                "Per-feature drift sketches of one tensor's columns: bin counts, moments, KLL, "
                                "category counts; mergeable and serializable")
      .def(py::init([](const std::vector<std::pair<int64_t, std::vector<double>>>& numeric,
                       const std::vector<std::tuple<int64_t, uint32_t, std::vector<int32_t>>>& categorical,
                       uint32_t kll_every, uint16_t kll_k) {
             return TensorAccumulator(make_spec(numeric, categorical, kll_every, kll_k));
           }),
           py::arg("numeric"), py::arg("categorical"), py::arg("kll_every") = 1,
           py::arg("kll_k") = AccumulatorSpec::kDefaultKllK)
      .def(
          "update",
          [](TensorAccumulator& self, const py::array& values) {
            const Table t = table_of(values);
            py::gil_scoped_release release;
            self.update(t.dtype, t.data, t.rows, t.cols);
          },
          py::arg("values"), "Adds the rows of a C-contiguous [rows, columns] array")
      .def("merge", &TensorAccumulator::merge, py::arg("other"))
      .def_property_readonly("rows", &TensorAccumulator::rows)
      .def_property_readonly("numeric_count", [](const TensorAccumulator& a) { return a.spec().numeric.size(); })
      .def_property_readonly("categorical_count", [](const TensorAccumulator& a) { return a.spec().categorical.size(); })
      .def("bin_counts", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.histogram(i).counts()); })
      .def("bin_edges", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.histogram(i).edges()); })
      .def("numeric_missing", [](const TensorAccumulator& a, size_t i) { return a.histogram(i).missing(); })
      .def("moments", [](const TensorAccumulator& a, size_t i) { return a.moments(i); })
      .def("quantiles", [](const TensorAccumulator& a, size_t i) { return a.quantiles(i); })
      .def("category_counts", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.categories(i).counts()); })
      .def("category_missing", [](const TensorAccumulator& a, size_t i) { return a.categories(i).missing(); })
      .def("serialize", [](const TensorAccumulator& a) { return to_bytes(a.serialize()); })
      .def_static(
          "deserialize",
          [](const py::bytes& data) {
            const std::string_view v = data;
            return TensorAccumulator::deserialize(reinterpret_cast<const uint8_t*>(v.data()), v.size());
          },
          py::arg("data"));

  py::class_<DriftMonitor, BatchObserver, std::shared_ptr<DriftMonitor>>(m, "DriftMonitor")
      .def(py::init([](const std::vector<std::pair<int64_t, std::vector<double>>>& numeric,
                       const std::vector<std::tuple<int64_t, uint32_t, std::vector<int32_t>>>& categorical,
                       std::optional<std::vector<std::pair<int64_t, std::vector<double>>>> output_numeric,
                       uint32_t kll_every, int64_t window_rows, double window_seconds, size_t history,
                       int64_t queue_rows, int input_index, int output_index) {
             drift::MonitorConfig config;
             config.window_rows = window_rows;
             config.window_seconds = window_seconds;
             config.history = history;
             config.queue_rows = queue_rows;
             config.input_index = input_index;
             config.output_index = output_numeric ? output_index : -1;
             auto outputs = output_numeric ? make_spec(*output_numeric, {}, kll_every, AccumulatorSpec::kDefaultKllK)
                                           : nullptr;
             return std::make_shared<DriftMonitor>(config, make_spec(numeric, categorical, kll_every,
                                                                     AccumulatorSpec::kDefaultKllK),
                                                   outputs);
           }),
           py::arg("numeric"), py::arg("categorical"), py::arg("output_numeric") = std::nullopt,
           py::arg("kll_every") = 1, py::arg("window_rows") = 10000, py::arg("window_seconds") = 60.0,
           py::arg("history") = 20, py::arg("queue_rows") = 1 << 16, py::arg("input_index") = 0,
           py::arg("output_index") = 0)
      .def(
          "offer",
          [](DriftMonitor& self, const py::array& inputs, std::optional<py::array> outputs) {
            const Table in = table_of(inputs);
            std::optional<Table> out;
            if (outputs) out = table_of(*outputs);
            if (out && out->rows != in.rows) throw std::invalid_argument("drift: inputs and outputs differ in rows");
            py::gil_scoped_release release;
            self.offer(in.dtype, in.data, in.cols, out ? out->dtype : DType::kFP32, out ? out->data : nullptr,
                       out ? out->cols : 0, in.rows);
          },
          py::arg("inputs"), py::arg("outputs") = std::nullopt)
      .def(
          "windows",
          [](const DriftMonitor& self, bool include_open, size_t last) {
            std::vector<drift::Window> windows;
            {
              py::gil_scoped_release release;
              windows = self.windows(include_open, last);
            }
            py::list out;
            for (const auto& w : windows) out.append(window_dict(w));
            return out;
          },
          py::arg("include_open") = true, py::arg("last") = 0)
      .def("stats",
           [](const DriftMonitor& self) {
             const drift::MonitorStats s = self.stats();
             py::dict d;
             d["rows_seen"] = s.rows_seen;
             d["rows_skipped"] = s.rows_skipped;
             d["batches_skipped"] = s.batches_skipped;
             d["rows_rejected"] = s.rows_rejected;
             d["windows_closed"] = s.windows_closed;
             d["queued_rows"] = s.queued_rows;
             return d;
           })
      .def("flush", &DriftMonitor::flush, py::call_guard<py::gil_scoped_release>())
      .def("close_window", &DriftMonitor::close_window, py::call_guard<py::gil_scoped_release>())
      .def("stop", &DriftMonitor::stop, py::call_guard<py::gil_scoped_release>());
}

}  // namespace loopserve
