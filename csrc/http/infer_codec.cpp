#include "http/infer_codec.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "http/msgspec_compat.h"
#include "yyjson.h"

namespace loopserve::http {

namespace {

// Mirrors protocol.py: at most 32 dimensions, nonzero dimensions multiplying to 2**59 at most,
// request ids of at most 256 characters.
constexpr size_t kMaxDims = 32;
constexpr uint64_t kMaxElements = uint64_t{1} << 59;
constexpr size_t kMaxIdChars = 256;
// parameters.group is kept with each prediction too: at most this many bytes of JSON text
// (protocol.MAX_GROUP_BYTES); a longer one is declined, for the Python path's 400.
constexpr size_t kMaxGroupBytes = 256;
// And of a routing key, in UTF-8 bytes (protocol.MAX_ROUTING_KEY_BYTES).
constexpr size_t kMaxRoutingKeyBytes = 1024;

// JSON written as msgspec writes it (the Python path's encoder): escapes in lower case
// ("\u001f", where yyjson writes "\u001F"), non-finite floats as null.
constexpr yyjson_write_flag kWriteFlags =
    YYJSON_WRITE_INF_AND_NAN_AS_NULL | YYJSON_WRITE_ALLOW_INVALID_UNICODE | YYJSON_WRITE_LOWERCASE_HEX;

// Each thread reuses its own yyjson memory (no allocation per request once warm).
yyjson_alc* thread_allocator() {
  struct Owned {
    yyjson_alc* alc = yyjson_alc_dyn_new();
    ~Owned() { yyjson_alc_dyn_free(alc); }
  };
  thread_local Owned owned;
  return owned.alc;
}

struct DocFree {
  void operator()(yyjson_doc* d) const noexcept { yyjson_doc_free(d); }
  void operator()(yyjson_mut_doc* d) const noexcept { yyjson_mut_doc_free(d); }
};

std::string_view str_of(yyjson_val* v) { return {yyjson_get_str(v), yyjson_get_len(v)}; }

bool key_is(yyjson_val* key, const char* name) { return yyjson_equals_str(key, name); }

// obj[name] into *out (nullptr when absent); false when the key is repeated: which one counts
// is the Python decoder's call (the last, where yyjson_obj_get gives the first).
bool only_value(yyjson_val* obj, const char* name, yyjson_val** out) {
  *out = nullptr;
  size_t i, max;
  yyjson_val *key, *val;
  yyjson_obj_foreach(obj, i, max, key, val) {
    if (!key_is(key, name)) continue;
    if (*out != nullptr) return false;
    *out = val;
  }
  return true;
}

// A signed integer that fits int64 (yyjson gives non-negative ones as uint).
bool as_int64(yyjson_val* v, int64_t* out) {
  if (yyjson_is_sint(v)) {
    *out = yyjson_get_sint(v);
    return true;
  }
  if (yyjson_is_uint(v) && yyjson_get_uint(v) <= static_cast<uint64_t>(INT64_MAX)) {
    *out = static_cast<int64_t>(yyjson_get_uint(v));
    return true;
  }
  return false;
}

size_t utf8_chars(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Whether msgspec decodes `v` where a request holds any JSON (`parameters`): it refuses a
// float past float64 there ("Number out of range"), which yyjson reads as raw text (a larger
// integer it takes). Recursive: the body's depth is bounded by kMaxDepth.
bool decodes_as_any(yyjson_val* v) {
  if (yyjson_is_raw(v)) {
    const std::string_view text(yyjson_get_raw(v), yyjson_get_len(v));
    return text.find_first_of(".eE") == std::string_view::npos;
  }
  size_t i, max;
  yyjson_val *key, *val;
  if (yyjson_is_arr(v)) {
    yyjson_arr_foreach(v, i, max, val) if (!decodes_as_any(val)) return false;
  } else if (yyjson_is_obj(v)) {
    yyjson_obj_foreach(v, i, max, key, val) if (!decodes_as_any(val)) return false;
  }
  return true;
}

bool numeric(DType t) { return t != DType::kBytes && t != DType::kFP16; }

// The nested lists' dimensions, following first elements; then every list at depth k must
// have dims[k] elements and every leaf sit at the last depth (numpy's regular array).
bool nested_dims(yyjson_val* data, std::vector<size_t>& dims) {
  for (yyjson_val* v = data; yyjson_is_arr(v); v = yyjson_arr_get_first(v)) {
    size_t n = yyjson_arr_size(v);
    if (n == 0 || dims.size() > kMaxDims) return false;
    dims.push_back(n);
  }
  return true;
}

// Collects the leaves of a regular nested array, checking its regularity.
bool leaves(yyjson_val* arr, const std::vector<size_t>& dims, size_t depth, std::vector<yyjson_val*>& out) {
  if (yyjson_arr_size(arr) != dims[depth]) return false;
  const bool last = depth + 1 == dims.size();
  size_t i, max;
  yyjson_val* v;
  yyjson_arr_foreach(arr, i, max, v) {
    if (last) {
      if (yyjson_is_ctn(v)) return false;
      out.push_back(v);
    } else if (!yyjson_is_arr(v) || !leaves(v, dims, depth + 1, out)) {
      return false;
    }
  }
  return true;
}

template <class T>
bool put_int(const std::vector<yyjson_val*>& items, std::byte* dst) {
  T* out = reinterpret_cast<T*>(dst);
  for (size_t i = 0; i < items.size(); ++i) {
    yyjson_val* v = items[i];
    if (yyjson_is_sint(v)) {
      int64_t x = yyjson_get_sint(v);
      if constexpr (std::is_signed_v<T>) {
        if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max()) return false;
      } else {
        if (x < 0 || static_cast<uint64_t>(x) > std::numeric_limits<T>::max()) return false;
      }
      out[i] = static_cast<T>(x);
    } else if (yyjson_is_uint(v)) {
      uint64_t x = yyjson_get_uint(v);
      // numpy reads a list of ints as int64: a larger one is a case the Python decoder settles
      if (x > static_cast<uint64_t>(INT64_MAX) || x > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
      out[i] = static_cast<T>(x);
    } else {
      return false;  // a float, bool or null among integers: the Python decoder answers it
    }
  }
  return true;
}

template <class T>
bool put_float(const std::vector<yyjson_val*>& items, std::byte* dst) {
  // numpy reads all-integer data as int64 and converts each to T at once; data with any
  // non-integer as float64, then T. Each way rounds as numpy does.
  bool any_real = false;
  for (yyjson_val* v : items) {
    if (yyjson_is_real(v)) any_real = true;
    else if (!yyjson_is_sint(v) && !(yyjson_is_uint(v) && yyjson_get_uint(v) <= static_cast<uint64_t>(INT64_MAX)))
      return false;
  }
  T* out = reinterpret_cast<T*>(dst);
  for (size_t i = 0; i < items.size(); ++i) {
    yyjson_val* v = items[i];
    if (yyjson_is_real(v)) {
      double d = yyjson_get_real(v);
      if constexpr (std::is_same_v<T, float>)
        if (std::fabs(d) > static_cast<double>(FLT_MAX)) return false;  // protocol.py refuses it
      out[i] = static_cast<T>(d);
    } else {
      int64_t x = yyjson_is_sint(v) ? yyjson_get_sint(v) : static_cast<int64_t>(yyjson_get_uint(v));
      out[i] = any_real ? static_cast<T>(static_cast<double>(x)) : static_cast<T>(x);
    }
  }
  return true;
}

bool put_bool(const std::vector<yyjson_val*>& items, std::byte* dst) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (!yyjson_is_bool(items[i])) return false;
    dst[i] = std::byte{yyjson_get_bool(items[i]) ? uint8_t{1} : uint8_t{0}};
  }
  return true;
}

bool put_elements(DType t, const std::vector<yyjson_val*>& items, std::byte* dst) {
  switch (t) {
    case DType::kBool: return put_bool(items, dst);
    case DType::kUInt8: return put_int<uint8_t>(items, dst);
    case DType::kUInt16: return put_int<uint16_t>(items, dst);
    case DType::kUInt32: return put_int<uint32_t>(items, dst);
    case DType::kUInt64: return put_int<uint64_t>(items, dst);
    case DType::kInt8: return put_int<int8_t>(items, dst);
    case DType::kInt16: return put_int<int16_t>(items, dst);
    case DType::kInt32: return put_int<int32_t>(items, dst);
    case DType::kInt64: return put_int<int64_t>(items, dst);
    case DType::kFP32: return put_float<float>(items, dst);
    case DType::kFP64: return put_float<double>(items, dst);
    default: return false;
  }
}

// The binary part of a request, taken input by input in order.
struct BinaryPart {
  const char* data;
  size_t size;
  size_t at = 0;
};

bool decode_input(yyjson_val* obj, DecodedInput& in, BinaryPart& binary) {
  if (!yyjson_is_obj(obj)) return false;
  yyjson_val *name = nullptr, *shape = nullptr, *datatype = nullptr, *data = nullptr, *params = nullptr;
  size_t i, max;
  yyjson_val *key, *val;
  yyjson_obj_foreach(obj, i, max, key, val) {
    yyjson_val** slot = key_is(key, "name") ? &name : key_is(key, "shape") ? &shape : key_is(key, "datatype") ? &datatype
                        : key_is(key, "data") ? &data : key_is(key, "parameters") ? &params : nullptr;
    if (slot == nullptr) continue;  // other fields are tolerated, as the Python decoder does
    if (*slot != nullptr) return false;  // a repeated key: which one counts is the Python decoder's call
    *slot = val;
  }
  if (!yyjson_is_str(name) || !yyjson_is_arr(shape) || !yyjson_is_str(datatype)) return false;
  yyjson_val* binary_size = nullptr;
  if (params != nullptr && !yyjson_is_null(params)) {
    if (!yyjson_is_obj(params) || !decodes_as_any(params) || !only_value(params, "binary_data_size", &binary_size))
      return false;
    if (binary_size != nullptr && yyjson_is_null(binary_size)) binary_size = nullptr;
  }
  // Its elements: JSON `data`, or binary_data_size bytes of the binary part (never both).
  if (binary_size != nullptr ? (data != nullptr && !yyjson_is_null(data)) : !yyjson_is_arr(data)) return false;
  auto dtype = dtype_from_name(str_of(datatype));
  if (!dtype || !numeric(*dtype)) return false;
  in.name = std::string(str_of(name));
  in.dtype = *dtype;
  if (yyjson_arr_size(shape) > kMaxDims) return false;
  uint64_t count = 1;
  yyjson_arr_foreach(shape, i, max, val) {
    int64_t d;
    if (!as_int64(val, &d) || d < 0) return false;
    if (d == 0) return false;  // an empty tensor: left to the Python decoder
    if (static_cast<uint64_t>(d) > kMaxElements / count) return false;
    count *= static_cast<uint64_t>(d);
    in.shape.push_back(d);
  }
  if (binary_size != nullptr) {
    int64_t size;
    if (!as_int64(binary_size, &size) || size < 0 || static_cast<uint64_t>(size) > binary.size - binary.at) return false;
    in.nbytes = count * dtype_size(in.dtype);
    if (static_cast<uint64_t>(size) != in.nbytes) return false;  // the Python decoder's message
    in.data = std::make_shared<Buffer>(in.nbytes);
    std::memcpy(in.data->data(), binary.data + binary.at, in.nbytes);
    binary.at += in.nbytes;
    if (in.dtype == DType::kBool)  // numpy's bool is one byte of 0 or 1; anything else is left to it
      for (size_t i = 0; i < in.nbytes; ++i)
        if (static_cast<uint8_t>(in.data->data()[i]) > 1) return false;
    return true;
  }
  std::vector<size_t> dims;
  if (!nested_dims(data, dims) || dims.empty()) return false;
  std::vector<yyjson_val*> items;
  items.reserve(yyjson_arr_size(data));
  if (!leaves(data, dims, 0, items) || items.size() != count) return false;
  in.nbytes = count * dtype_size(in.dtype);
  in.data = std::make_shared<Buffer>(in.nbytes);
  return put_elements(in.dtype, items, in.data->data());
}

bool decode_parameters(yyjson_val* params, DecodedInfer& out) {
  if (params == nullptr || yyjson_is_null(params)) return true;
  if (!yyjson_is_obj(params) || !decodes_as_any(params)) return false;
  size_t i, max;
  yyjson_val *key, *val;
  yyjson_val *priority = nullptr, *timeout = nullptr, *routing = nullptr, *group = nullptr, *binary = nullptr;
  yyjson_obj_foreach(params, i, max, key, val) {
    yyjson_val** slot = key_is(key, "priority") ? &priority : key_is(key, "timeout") ? &timeout
                        : key_is(key, "routing_key") ? &routing : key_is(key, "group") ? &group
                        : key_is(key, "binary_data_output") ? &binary : nullptr;
    if (slot == nullptr) continue;
    if (*slot != nullptr) return false;
    *slot = val;
  }
  if (priority != nullptr) {
    int64_t p;
    if (!as_int64(priority, &p) || p < 0 || p > INT32_MAX) return false;
    out.priority = static_cast<int>(p);
  }
  if (timeout != nullptr && !as_int64(timeout, &out.timeout_us)) return false;
  if (routing != nullptr && !yyjson_is_null(routing)) {
    if (!yyjson_is_str(routing)) return false;
    out.routing_key = std::string(str_of(routing));
    if (out.routing_key.size() > kMaxRoutingKeyBytes) return false;
  }
  if (binary != nullptr && !yyjson_is_null(binary)) {
    if (!yyjson_is_bool(binary)) return false;  // Python takes its truth: other values are its to read
    out.binary_default = yyjson_get_bool(binary);
  }
  if (group != nullptr && !yyjson_is_null(group)) {
    // A scalar (a number past float64 reads as raw, which the Python decoder refuses); any other
    // group is the Python path's to read and refuse as it does.
    if (!yyjson_is_str(group) && !yyjson_is_bool(group) && !yyjson_is_int(group) && !yyjson_is_real(group))
      return false;
    // As the Python path hands it to the engine (msgspec.json.encode): the feedback record
    // keeps this text, so one group reads the same whichever path a request took.
    if (yyjson_is_real(group)) {
      char number[40];
      out.group.assign(number, format_like_msgspec(yyjson_get_real(group), number));
      return true;
    }
    size_t len = 0;
    char* text = yyjson_val_write(group, kWriteFlags, &len);
    if (text == nullptr) return false;
    out.group.assign(text, len);
    std::free(text);
    if (out.group.size() > kMaxGroupBytes) return false;
  }
  return true;
}

bool decode_outputs(yyjson_val* outputs, DecodedInfer& out) {
  if (outputs == nullptr || yyjson_is_null(outputs)) return true;
  if (!yyjson_is_arr(outputs)) return false;
  out.outputs_given = true;
  size_t i, max;
  yyjson_val* o;
  yyjson_arr_foreach(outputs, i, max, o) {
    yyjson_val *name, *params, *binary;
    if (!yyjson_is_obj(o) || !only_value(o, "name", &name) || !only_value(o, "parameters", &params)) return false;
    if (!yyjson_is_str(name)) return false;
    int8_t binary_output = -1;
    if (params != nullptr && !yyjson_is_null(params)) {
      if (!yyjson_is_obj(params) || !decodes_as_any(params) || !only_value(params, "binary_data", &binary))
        return false;
      if (binary != nullptr) {
        if (!yyjson_is_bool(binary)) return false;  // the Python path's message
        binary_output = yyjson_get_bool(binary) ? 1 : 0;
      }
    }
    out.outputs.emplace_back(str_of(name));
    out.outputs_binary.push_back(binary_output);
  }
  return true;
}

}  // namespace

bool decode_infer(const char* json, size_t json_size, const char* binary, size_t binary_size, DecodedInfer& out) {
  if (nested_deeper_than(json, json_size, kMaxDepth)) return false;
  std::unique_ptr<yyjson_doc, DocFree> doc(
      yyjson_read_opts(const_cast<char*>(json), json_size, YYJSON_READ_BIGNUM_AS_RAW, thread_allocator(), nullptr));
  if (!doc) return false;
  yyjson_val* root = yyjson_doc_get_root(doc.get());
  if (!yyjson_is_obj(root)) return false;
  yyjson_val *inputs = nullptr, *id = nullptr, *params = nullptr, *outputs = nullptr;
  size_t i, max;
  yyjson_val *key, *val;
  yyjson_obj_foreach(root, i, max, key, val) {
    yyjson_val** slot = key_is(key, "inputs") ? &inputs : key_is(key, "id") ? &id : key_is(key, "parameters") ? &params
                        : key_is(key, "outputs") ? &outputs : nullptr;
    if (slot == nullptr) continue;
    if (*slot != nullptr) return false;
    *slot = val;
  }
  if (!yyjson_is_arr(inputs) || yyjson_arr_size(inputs) == 0) return false;
  if (id != nullptr && !yyjson_is_null(id)) {
    if (!yyjson_is_str(id) || utf8_chars(str_of(id)) > kMaxIdChars) return false;
    out.id = std::string(str_of(id));
  }
  if (!decode_parameters(params, out) || !decode_outputs(outputs, out)) return false;
  out.inputs.resize(yyjson_arr_size(inputs));
  BinaryPart part{binary, binary_size};
  size_t n = 0;
  yyjson_arr_foreach(inputs, i, max, val) {
    if (!decode_input(val, out.inputs[n], part)) return false;
    for (size_t k = 0; k < n; ++k)
      if (out.inputs[k].name == out.inputs[n].name) return false;  // repeated: the Python decoder's message
    ++n;
  }
  return part.at == part.size;  // bytes left over: the Python decoder's message
}

void raw_input(const char* body, size_t size, DecodedInfer& out) {
  DecodedInput in;
  in.dtype = DType::kUInt8;  // its datatype and shape are the model's (serving/dispatch.h)
  in.shape = {static_cast<int64_t>(size)};
  in.nbytes = size;
  in.data = std::make_shared<Buffer>(size);
  if (size > 0) std::memcpy(in.data->data(), body, size);
  out.inputs.push_back(std::move(in));
}

bool encodable(DType dtype) { return numeric(dtype); }

namespace {

// Floats written by format_like_msgspec, as raw JSON text (non-finite ones as null).
template <class T>
yyjson_mut_val* float_array(yyjson_mut_doc* doc, const T* values, size_t n) {
  yyjson_mut_val* arr = yyjson_mut_arr(doc);
  char text[40];
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(values[i]);  // a float32's double: what tolist() gives Python
    if (!std::isfinite(d)) {
      yyjson_mut_arr_add_null(doc, arr);
      continue;
    }
    yyjson_mut_arr_append(arr, yyjson_mut_rawncpy(doc, text, format_like_msgspec(d, text)));
  }
  return arr;
}

yyjson_mut_val* data_array(yyjson_mut_doc* doc, DType t, const std::byte* p, size_t n) {
  switch (t) {
    case DType::kBool: {
      yyjson_mut_val* arr = yyjson_mut_arr(doc);
      for (size_t i = 0; i < n; ++i) yyjson_mut_arr_add_bool(doc, arr, p[i] != std::byte{0});
      return arr;
    }
    case DType::kUInt8: return yyjson_mut_arr_with_uint8(doc, reinterpret_cast<const uint8_t*>(p), n);
    case DType::kUInt16: return yyjson_mut_arr_with_uint16(doc, reinterpret_cast<const uint16_t*>(p), n);
    case DType::kUInt32: return yyjson_mut_arr_with_uint32(doc, reinterpret_cast<const uint32_t*>(p), n);
    case DType::kUInt64: return yyjson_mut_arr_with_uint64(doc, reinterpret_cast<const uint64_t*>(p), n);
    case DType::kInt8: return yyjson_mut_arr_with_sint8(doc, reinterpret_cast<const int8_t*>(p), n);
    case DType::kInt16: return yyjson_mut_arr_with_sint16(doc, reinterpret_cast<const int16_t*>(p), n);
    case DType::kInt32: return yyjson_mut_arr_with_sint32(doc, reinterpret_cast<const int32_t*>(p), n);
    case DType::kInt64: return yyjson_mut_arr_with_sint64(doc, reinterpret_cast<const int64_t*>(p), n);
    case DType::kFP32: return float_array(doc, reinterpret_cast<const float*>(p), n);
    case DType::kFP64: return float_array(doc, reinterpret_cast<const double*>(p), n);
    default: return nullptr;
  }
}

bool write_doc(yyjson_mut_doc* doc, std::string& out) {
  size_t len = 0;
  yyjson_alc* alc = thread_allocator();
  char* text = yyjson_mut_write_opts(doc, kWriteFlags, alc, &len, nullptr);
  if (text == nullptr) return false;
  out.assign(text, len);
  alc->free(alc->ctx, text);
  return true;
}

}  // namespace

bool encode_answer(std::string& out, int64_t* json_length, std::string_view model, int64_t version,
                   std::string_view id, const Completion& c, const std::vector<std::string_view>& names,
                   const std::vector<ChosenOutput>& chosen) {
  std::unique_ptr<yyjson_mut_doc, DocFree> doc(yyjson_mut_doc_new(thread_allocator()));
  yyjson_mut_doc* d = doc.get();
  yyjson_mut_val* root = yyjson_mut_obj(d);
  yyjson_mut_doc_set_root(d, root);
  yyjson_mut_obj_add_strn(d, root, "model_name", model.data(), model.size());
  yyjson_mut_val* outputs = yyjson_mut_obj_add_arr(d, root, "outputs");
  const std::string version_text = std::to_string(version);
  std::vector<std::pair<const std::byte*, size_t>> binary_parts;  // written after the JSON, in order
  for (const ChosenOutput& choice : chosen) {
    const size_t index = choice.index;
    const OutputTensor& o = c.result->outputs[index];
    if (!encodable(o.dtype)) return false;
    std::vector<int64_t> shape = o.shape;
    const std::byte* data = o.data.data();
    size_t nbytes = o.data.size();
    if (!c.whole) {  // this request's rows of the batch
      const size_t row_bytes = nbytes / static_cast<size_t>(o.shape[0]);
      data += static_cast<size_t>(c.row_begin) * row_bytes;
      nbytes = static_cast<size_t>(c.rows) * row_bytes;
      shape[0] = c.rows;
    }
    yyjson_mut_val* entry = yyjson_mut_arr_add_obj(d, outputs);
    yyjson_mut_obj_add_strn(d, entry, "name", names[index].data(), names[index].size());
    const std::string_view dtype = dtype_name(o.dtype);
    yyjson_mut_obj_add_strn(d, entry, "datatype", dtype.data(), dtype.size());
    yyjson_mut_obj_add_val(d, entry, "shape", yyjson_mut_arr_with_sint64(d, shape.data(), shape.size()));
    if (choice.binary) {  // Triton's binary form: its size here, its bytes after the JSON
      yyjson_mut_val* params = yyjson_mut_obj_add_obj(d, entry, "parameters");
      yyjson_mut_obj_add_uint(d, params, "binary_data_size", nbytes);
      binary_parts.emplace_back(data, nbytes);
    } else {
      yyjson_mut_obj_add_val(d, entry, "data", data_array(d, o.dtype, data, nbytes / dtype_size(o.dtype)));
    }
  }
  yyjson_mut_obj_add_strn(d, root, "model_version", version_text.data(), version_text.size());
  if (!id.empty()) yyjson_mut_obj_add_strn(d, root, "id", id.data(), id.size());
  if (!write_doc(d, out)) return false;
  *json_length = binary_parts.empty() ? -1 : static_cast<int64_t>(out.size());
  for (const auto& [p, n] : binary_parts) out.append(reinterpret_cast<const char*>(p), n);
  return true;
}

std::string error_body(std::string_view message) {
  std::unique_ptr<yyjson_mut_doc, DocFree> doc(yyjson_mut_doc_new(thread_allocator()));
  yyjson_mut_val* root = yyjson_mut_obj(doc.get());
  yyjson_mut_doc_set_root(doc.get(), root);
  yyjson_mut_obj_add_strn(doc.get(), root, "error", message.data(), message.size());
  std::string out;
  if (!write_doc(doc.get(), out)) out = "{\"error\":\"?\"}";
  return out;
}

}  // namespace loopserve::http
