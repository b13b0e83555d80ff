#include "py_executor.h"

#include <pybind11/stl.h>

#include "bytes_tensor.h"

#include <cstring>
#include <stdexcept>

namespace loopserve {

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::kBool: return py::dtype::of<bool>();
    case DType::kUInt8: return py::dtype::of<uint8_t>();
    case DType::kUInt16: return py::dtype::of<uint16_t>();
    case DType::kUInt32: return py::dtype::of<uint32_t>();
    case DType::kUInt64: return py::dtype::of<uint64_t>();
    case DType::kInt8: return py::dtype::of<int8_t>();
    case DType::kInt16: return py::dtype::of<int16_t>();
    case DType::kInt32: return py::dtype::of<int32_t>();
    case DType::kInt64: return py::dtype::of<int64_t>();
    case DType::kFP16: return py::dtype("float16");
    case DType::kFP32: return py::dtype::of<float>();
    case DType::kFP64: return py::dtype::of<double>();
    case DType::kBytes: return py::dtype("O");
  }
  throw std::invalid_argument("unknown dtype");
}

DType dtype_of(const py::dtype& d) {
  const char kind = d.kind();
  const auto size = d.itemsize();
  const char order = d.byteorder();
  if (order == '>') throw std::invalid_argument("big-endian arrays are not supported; use native byte order");
  switch (kind) {
    case 'O': case 'S': case 'U': return DType::kBytes;
    case 'b': return DType::kBool;
    case 'u':
      if (size == 1) return DType::kUInt8;
      if (size == 2) return DType::kUInt16;
      if (size == 4) return DType::kUInt32;
      if (size == 8) return DType::kUInt64;
      break;
    case 'i':
      if (size == 1) return DType::kInt8;
      if (size == 2) return DType::kInt16;
      if (size == 4) return DType::kInt32;
      if (size == 8) return DType::kInt64;
      break;
    case 'f':
      if (size == 2) return DType::kFP16;
      if (size == 4) return DType::kFP32;
      if (size == 8) return DType::kFP64;
      break;
    default: break;
  }
  throw std::invalid_argument("numpy dtype " + py::str(d).cast<std::string>() +
                              " has no Open Inference Protocol datatype");
}

py::array bytes_to_array(const std::byte* data, size_t nbytes, const std::vector<int64_t>& shape) {
  py::list items;
  for (size_t at = 0; at < nbytes;) {
    const size_t length = bytes_element_length(data + at);
    items.append(py::bytes(reinterpret_cast<const char*>(data + at + 4), length));
    at += 4 + length;
  }
  // Built flat, then shaped: numpy does not look inside bytes objects.
  py::array flat = py::module_::import("numpy").attr("array")(items, py::dtype("O"));
  return flat.attr("reshape")(shape);
}

Buffer array_to_bytes(const py::array& array) {
  std::vector<py::bytes> elements;
  size_t total = 0;
  for (py::handle item : py::iter(array.attr("ravel")())) {
    py::bytes b;
    if (py::isinstance<py::bytes>(item)) {
      b = py::reinterpret_borrow<py::bytes>(item);
    } else if (py::isinstance<py::str>(item)) {
      b = py::reinterpret_steal<py::bytes>(PyUnicode_AsUTF8String(item.ptr()));
      if (!b) throw py::error_already_set();
    } else {
      throw std::invalid_argument("BYTES elements must be bytes or str, found " +
                                  py::str(py::type::of(item)).cast<std::string>());
    }
    total += 4 + static_cast<size_t>(PyBytes_GET_SIZE(b.ptr()));
    elements.push_back(std::move(b));
  }
  Buffer out(total);
  std::byte* p = out.data();
  for (const py::bytes& b : elements) {
    const auto n = static_cast<size_t>(PyBytes_GET_SIZE(b.ptr()));
    put_bytes_element_length(p, static_cast<uint32_t>(n));
    std::memcpy(p + 4, PyBytes_AS_STRING(b.ptr()), n);
    p += 4 + n;
  }
  return out;
}

namespace {

// A model's own exception as its clients read it: type and message, the server's directories
// hidden (loopserve.errors.model_failure_text, which logs the traceback); never the traceback,
// which names the server's files.
std::string failure_text(const py::error_already_set& e) {
  try {
    return py::module_::import("loopserve.errors")
        .attr("model_failure_text")(e.type(), e.value(), e.trace())
        .cast<std::string>();
  } catch (const py::error_already_set&) {
    return "the model failed (the server's log has its error)";
  }
}

}  // namespace

PyExecutor::PyExecutor(py::object fn, const std::vector<TensorSpec>& inputs, const std::vector<TensorSpec>& outputs,
                       std::vector<std::vector<std::pair<uintptr_t, size_t>>> staging, bool pass_instance)
    : fn_(std::move(fn)), outputs_(outputs), staging_(std::move(staging)), pass_instance_(pass_instance) {
  for (const TensorSpec& t : inputs) input_names_.emplace_back(t.name);
  for (const TensorSpec& t : outputs) output_names_.emplace_back(t.name);
}

std::byte* PyExecutor::staging(int instance, size_t input, size_t nbytes) {
  if (instance < 0 || static_cast<size_t>(instance) >= staging_.size()) return nullptr;
  const auto& per_input = staging_[static_cast<size_t>(instance)];
  if (input >= per_input.size() || nbytes > per_input[input].second) return nullptr;
  return reinterpret_cast<std::byte*>(per_input[input].first);
}

void PyExecutor::run(const Batch& batch, BatchResult& out) {
  py::gil_scoped_acquire gil;
  try {
    py::dict args;
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      const BatchInput& in = batch.inputs[i];
      if (in.dtype == DType::kBytes) {
        args[input_names_[i]] = bytes_to_array(in.data, in.nbytes, in.shape);
        continue;
      }
      // A base object makes numpy view the memory instead of copying it.
      args[input_names_[i]] = py::array(numpy_dtype(in.dtype), in.shape, in.data, py::none());
    }
    py::object result = pass_instance_ ? fn_(args, batch.instance) : fn_(args);

    const size_t n = outputs_.size();
    std::vector<py::object> values(n);
    if (py::isinstance<py::dict>(result)) {
      py::dict d = result.cast<py::dict>();
      for (size_t i = 0; i < n; ++i) {
        if (!d.contains(output_names_[i]))
          throw ModelError("the model returned no output '" + outputs_[i].name + "' (it returned " +
                           py::str(py::list(d.attr("keys")())).cast<std::string>() + ")");
        values[i] = d[output_names_[i]];
      }
    } else if (n == 1 && !py::isinstance<py::tuple>(result) && !py::isinstance<py::list>(result)) {
      values[0] = result;
    } else if (py::isinstance<py::tuple>(result) || py::isinstance<py::list>(result)) {
      py::sequence seq = result.cast<py::sequence>();
      if (seq.size() != n)
        throw ModelError("the model returned " + std::to_string(seq.size()) + " outputs; its config declares " +
                         std::to_string(n));
      for (size_t i = 0; i < n; ++i) values[i] = seq[i];
    } else {
      throw ModelError("the model returned " + py::str(py::type::of(result)).cast<std::string>() +
                       "; expected a dict of output name to array, or a sequence in declared order");
    }

    out.outputs.resize(n);
    for (size_t i = 0; i < n; ++i) {
      auto arr = py::array::ensure(values[i], py::array::c_style);
      if (!arr)
        throw ModelError("output '" + outputs_[i].name + "' is a " +
                         py::str(py::type::of(values[i])).cast<std::string>() + ", not an array");
      OutputTensor& o = out.outputs[i];
      try {
        o.dtype = dtype_of(arr.dtype());
      } catch (const std::invalid_argument& e) {
        throw ModelError("output '" + outputs_[i].name + "' returned by the model: " + e.what());
      }
      o.shape.assign(arr.shape(), arr.shape() + arr.ndim());
      if (o.dtype == DType::kBytes) {
        try {
          o.data = array_to_bytes(arr);
        } catch (const std::invalid_argument& e) {
          throw ModelError("output '" + outputs_[i].name + "' returned by the model: " + e.what());
        }
        continue;
      }
      o.data.reserve(static_cast<size_t>(arr.nbytes()));
      if (arr.nbytes() > 0) std::memcpy(o.data.data(), arr.data(), static_cast<size_t>(arr.nbytes()));
    }
  } catch (py::error_already_set& e) {
    throw ModelError(failure_text(e));
  }
}

}  // namespace loopserve
