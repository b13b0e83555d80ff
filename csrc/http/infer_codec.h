// The JSON body of an Open Inference Protocol infer request and answer, for the engine's
// native HTTP path (http/server.cpp), on yyjson.
//
// The decoder takes only the common request whole and exactly as the Python decoder
// (python/loopserve/server/protocol.py) would take it: inputs of a fixed-size numeric
// datatype, with flat or regularly nested `data` or Triton's binary tensor data, and the
// parameters the server reads; answers go out in JSON or binary as asked. Whatever it
// does not take (another datatype, binary data, a malformed body, anything unusual) it
// declines, and the connection goes to the Python front end, which answers it (and every
// error message) as it always has. So a request the native path answers gets the answer
// the Python path would give.
//
// Thread-safety: pure functions; each thread keeps its own yyjson allocator.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "buffer.h"
#include "completion.h"
#include "dtype.h"
#include "tensor.h"

namespace loopserve::http {

struct DecodedInput {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::shared_ptr<Buffer> data;  // the elements, row-major, little-endian
  size_t nbytes = 0;
};

struct DecodedInfer {
  std::string id;              // empty: none given
  int priority = 0;
  int64_t timeout_us = -1;
  std::string routing_key;
  std::string group;           // parameters.group as JSON text; empty: none
  std::vector<DecodedInput> inputs;
  bool binary_default = false; // parameters.binary_data_output
  bool outputs_given = false;  // `outputs` named which outputs, in which order
  std::vector<std::string> outputs;
  std::vector<int8_t> outputs_binary;  // per named output: 1 binary, 0 JSON, -1 as binary_default
};

// True when the request is one the native path takes (filled into `out`); false: decline.
// `json`: the body, or with Triton's binary tensor extension its first
// Inference-Header-Content-Length bytes, and `binary` the rest (inputs with
// parameters.binary_data_size take their bytes from it, in order).
bool decode_infer(const char* json, size_t json_size, const char* binary, size_t binary_size, DecodedInfer& out);

// Triton's raw binary form (Inference-Header-Content-Length: 0): the whole body is the one input.
void raw_input(const char* body, size_t size, DecodedInfer& out);

// The output to write: its index in the completion, and whether as binary data.
struct ChosenOutput {
  size_t index;
  bool binary;
};

// The answer's body, as the Python encoder writes it (field order, flat `data`, non-finite
// floats as null; binary outputs' bytes after the JSON, `*json_length` its length, else -1).
// `names`: the model's output names, in the completion's order; `chosen`: which of them to
// write, in order. Returns false when an output's datatype is one the native encoder does not
// write (no such request is taken natively, see `encodable`).
bool encode_answer(std::string& out, int64_t* json_length, std::string_view model, int64_t version,
                   std::string_view id, const Completion& c, const std::vector<std::string_view>& names,
                   const std::vector<ChosenOutput>& chosen);

// Whether the native encoder writes this datatype as JSON.
bool encodable(DType dtype);

// {"error": message}, escaped as msgspec escapes it.
std::string error_body(std::string_view message);

}  // namespace loopserve::http
