// Python bindings of the drift accumulators and monitor (loopserve._core).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
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
                                                 uint32_t kll_every, uint16_t kll_k,
                                                 uint32_t extremes_k = sketches::Extremes::kDefaultK,
                                                 uint64_t exact_capacity = sketches::ExactValues::kDefaultCapacity) {
  auto spec = std::make_shared<AccumulatorSpec>();
  for (const auto& [column, edges] : numeric) spec->numeric.push_back({column, edges});
  for (const auto& [column, slots, lut] : categorical) spec->categorical.push_back({column, slots, lut});
  spec->kll_every = kll_every;
  spec->kll_k = kll_k;
  if (extremes_k == 0) throw std::invalid_argument("extremes_k must be at least 1");
  spec->extremes_k = extremes_k;
  spec->exact_capacity = exact_capacity;
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

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

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
                       uint32_t kll_every, uint16_t kll_k, uint32_t extremes_k, uint64_t exact_values) {
             return TensorAccumulator(make_spec(numeric, categorical, kll_every, kll_k, extremes_k, exact_values));
           }),
           py::arg("numeric"), py::arg("categorical"), py::arg("kll_every") = 1,
           py::arg("kll_k") = AccumulatorSpec::kDefaultKllK, py::arg("extremes_k") = sketches::Extremes::kDefaultK,
           py::arg("exact_values") = sketches::ExactValues::kDefaultCapacity)
      .def(
          "update",
          [](TensorAccumulator& self, const py::array& values) {
            const Table t = table_of(values);
            py::gil_scoped_release release;
            self.update(t.dtype, t.data, t.rows, t.cols);
          },
          py::arg("values"), "Adds the rows of a C-contiguous [rows, columns] array")
      .def("merge", &TensorAccumulator::merge, py::arg("other"))
      .def(
          "absorb",
          [](TensorAccumulator& self, uint64_t rows, const I64Array& bins, const F64Array& sums,
             const I64Array& missing, const I64Array& n, const F64Array& mean, const F64Array& m2, const F64Array& lo,
             const F64Array& hi, const F64Array& samples, const I64Array& cat_counts, const I64Array& cat_missing,
             const std::optional<F64Array>& top, const std::optional<F64Array>& bottom,
             const std::optional<py::array>& values) {
            const size_t F = self.spec().numeric.size(), C = self.spec().categorical.size();
            size_t width = 0;
            for (const auto& c : self.spec().numeric) width = std::max(width, c.edges.size() + 1);
            size_t slots = 0;
            for (size_t c = 0; c < C; ++c) slots = std::max<size_t>(slots, self.categories(c).other_slot() + 1);
            auto check = [](const py::array& a, size_t rows_, size_t cols, const char* name) {
              const bool ok = (a.ndim() == 1 && cols == 0 && static_cast<size_t>(a.shape(0)) == rows_) ||
                              (a.ndim() == 2 && static_cast<size_t>(a.shape(0)) == rows_ && static_cast<size_t>(a.shape(1)) >= cols);
              if (!ok) throw std::invalid_argument(std::string("absorb: ") + name + " has the wrong shape");
            };
            check(bins, F, width, "bins");
            check(sums, F, width, "sums");
            if (sums.ndim() != bins.ndim() || (bins.ndim() == 2 && sums.shape(1) != bins.shape(1)))
              throw std::invalid_argument("absorb: sums must have the shape of bins");
            check(cat_counts, C, slots, "cat_counts");
            for (const auto* a : {&missing, &n}) check(*a, F, 0, "a per-feature count");
            for (const auto* a : {&mean, &m2, &lo, &hi}) check(*a, F, 0, "a per-feature moment");
            check(cat_missing, C, 0, "cat_missing");
            if (samples.ndim() != 2 || (samples.shape(0) > 0 && static_cast<size_t>(samples.shape(1)) != F))
              throw std::invalid_argument("absorb: samples must be [rows, numeric features]");
            TensorAccumulator::Parts p;
            p.rows = rows;
            p.bins = bins.data();
            p.sums = sums.data();
            p.bins_stride = bins.ndim() == 2 ? static_cast<size_t>(bins.shape(1)) : 0;
            p.missing = missing.data();
            p.n = n.data();
            p.mean = mean.data(), p.m2 = m2.data(), p.min = lo.data(), p.max = hi.data();
            p.samples = samples.data();
            p.n_samples = static_cast<size_t>(samples.shape(0));
            p.cat_counts = cat_counts.data();
            p.cat_stride = cat_counts.ndim() == 2 ? static_cast<size_t>(cat_counts.shape(1)) : 0;
            p.cat_missing = cat_missing.data();
            if (top.has_value() != bottom.has_value()) throw std::invalid_argument("absorb: pass both top and bottom");
            if (top) {
              if (top->ndim() != 2 || static_cast<size_t>(top->shape(0)) != F || bottom->ndim() != 2 ||
                  bottom->shape(0) != top->shape(0) || bottom->shape(1) != top->shape(1))
                throw std::invalid_argument("absorb: top and bottom must be [numeric features, candidates]");
              p.top = top->data(), p.bottom = bottom->data();
              p.extremes_stride = static_cast<size_t>(top->shape(1));
            }
            if (values) {
              const Table t = table_of(*values);
              if (static_cast<uint64_t>(t.rows) != rows || static_cast<size_t>(t.cols) != F)
                throw std::invalid_argument("absorb: values must be [rows, numeric features]");
              if (t.dtype == DType::kFP32) p.values_f32 = static_cast<const float*>(t.data);
              else if (t.dtype == DType::kFP64) p.values_f64 = static_cast<const double*>(t.data);
              else throw std::invalid_argument("absorb: values must be FP32 or FP64");
            }
            py::gil_scoped_release release;
            self.absorb(p);
          },
          py::arg("rows"), py::arg("bins"), py::arg("sums"), py::arg("missing"), py::arg("n"), py::arg("mean"),
          py::arg("m2"), py::arg("min"), py::arg("max"), py::arg("samples"), py::arg("cat_counts"), py::arg("cat_missing"),
          py::arg("top") = py::none(), py::arg("bottom") = py::none(), py::arg("values") = py::none(),
          "Adds rows summarized elsewhere (the GPU kernels): bins [F, >= E+1], sums (of each bin's values, as "
          "bins), missing/n/mean/m2/min/max [F], "
          "samples [S, F] (the quantile sketches' rows, in order), cat_counts [C, >= K+1], cat_missing [C], "
          "top and bottom [F, >= k] (candidates holding each feature's k largest and k smallest values; NaN pads), "
          "values [rows, F] (FP32 or FP64: every row's features, kept exactly while they fit; else None)")
      .def(
          "sample_rows",
          [](TensorAccumulator& self, uint64_t rows) {
            const std::vector<uint64_t> picked = self.sample_rows(rows);
            return py::array_t<int64_t>(static_cast<py::ssize_t>(picked.size()),
                                        reinterpret_cast<const int64_t*>(picked.data()));
          },
          py::arg("rows"), "Indices of the rows among the next `rows` the quantile sketches take (as update())")
      .def_property_readonly("rows", &TensorAccumulator::rows)
      .def_property_readonly("numeric_count", [](const TensorAccumulator& a) { return a.spec().numeric.size(); })
      .def_property_readonly("categorical_count", [](const TensorAccumulator& a) { return a.spec().categorical.size(); })
      .def("bin_counts", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.histogram(i).counts()); })
      .def("bin_sums", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.histogram(i).sums()); },
           "The sum of the values in each bin (NaN where read from a format without sums)")
      .def("bin_edges", [](const TensorAccumulator& a, size_t i) { return to_numpy(a.histogram(i).edges()); })
      .def("numeric_missing", [](const TensorAccumulator& a, size_t i) { return a.histogram(i).missing(); })
      .def("moments", [](const TensorAccumulator& a, size_t i) { return a.moments(i); })
      .def("quantiles", [](const TensorAccumulator& a, size_t i) { return a.quantiles(i); })
      .def(
          "extremes",
          [](const TensorAccumulator& a, size_t i) -> py::object {
            if (!a.extremes_known()) return py::none();
            return py::make_tuple(to_numpy(a.extremes(i).bottom()), to_numpy(a.extremes(i).top()));
          },
          py::arg("i"),
          "(bottom, top): feature i's k smallest and k largest finite values, increasing; None where unknown "
          "(read from a format before they were kept)")
      .def_property_readonly("extremes_k", [](const TensorAccumulator& a) { return a.spec().extremes_k; })
      .def(
          "exact_values",
          [](const TensorAccumulator& a, size_t i) -> py::object {
            const auto& values = a.exact_values(i);
            if (!values.complete()) return py::none();
            std::vector<double> finite;
            {
              py::gil_scoped_release release;
              finite = values.finite();
            }
            py::object out = to_numpy(finite);
            out.attr("sort")();  // numpy's vectorized sort: several times std::sort's speed
            return out;
          },
          py::arg("i"),
          "Feature i's finite values, all of them, increasing; None where the window did not keep them "
          "(more rows than exact_values, dropped, or read from a format before they were kept)")
      .def("drop_exact_values", &TensorAccumulator::drop_exact_values)
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
                       int64_t queue_rows, int input_index, int output_index, uint32_t extremes_k,
                       uint64_t exact_values, size_t exact_windows) {
             drift::MonitorConfig config;
             config.window_rows = window_rows;
             config.window_seconds = window_seconds;
             config.history = history;
             config.queue_rows = queue_rows;
             config.input_index = input_index;
             config.output_index = output_numeric ? output_index : -1;
             config.exact_windows = exact_windows;
             auto outputs = output_numeric ? make_spec(*output_numeric, {}, kll_every, AccumulatorSpec::kDefaultKllK,
                                                       extremes_k, exact_values)
                                           : nullptr;
             return std::make_shared<DriftMonitor>(config, make_spec(numeric, categorical, kll_every,
                                                                     AccumulatorSpec::kDefaultKllK, extremes_k,
                                                                     exact_values),
                                                   outputs);
           }),
           py::arg("numeric"), py::arg("categorical"), py::arg("output_numeric") = std::nullopt,
           py::arg("kll_every") = 1, py::arg("window_rows") = 10000, py::arg("window_seconds") = 60.0,
           py::arg("history") = 20, py::arg("queue_rows") = 1 << 16, py::arg("input_index") = 0,
           py::arg("output_index") = 0, py::arg("extremes_k") = sketches::Extremes::kDefaultK,
           py::arg("exact_values") = sketches::ExactValues::kDefaultCapacity, py::arg("exact_windows") = 2)
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
      .def(
          "push_closed",
          [](DriftMonitor& self, const TensorAccumulator& inputs, std::optional<TensorAccumulator> outputs,
             double start, double end) {
            drift::Window w{start, end, true, inputs, std::move(outputs)};
            py::gil_scoped_release release;
            self.push_closed(std::move(w));
          },
          py::arg("inputs"), py::arg("outputs"), py::arg("start"), py::arg("end"),
          "Adds a window accumulated elsewhere (the GPU path) as the newest closed window")
      .def("flush", &DriftMonitor::flush, py::call_guard<py::gil_scoped_release>())
      .def("close_window", &DriftMonitor::close_window, py::call_guard<py::gil_scoped_release>())
      .def("stop", &DriftMonitor::stop, py::call_guard<py::gil_scoped_release>());
}

}  // namespace loopserve
