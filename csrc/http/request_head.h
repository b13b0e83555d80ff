// A request's head as the native HTTP path reads it (picohttpparser): is it the infer route,
// in a form the native path takes? Anything else is the Python front end's (http/server.h).
//
// Thread-safety: a pure function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace loopserve::http {

struct InferHead {
  size_t head_bytes = 0;           // the head's length; the body follows
  std::string_view model, version; // from the path; version empty when not named
  size_t content_length = 0;
  int64_t json_bytes = -1;         // Inference-Header-Content-Length (binary tensors); -1: absent
  bool keep_alive = true;          // false: `Connection: close`
};

enum class HeadVerdict {
  kPartial,  // the head has not all arrived
  kInfer,    // POST /v2/models/{m}[/versions/{v}]/infer, HTTP/1.1, Content-Length, nothing unusual
  kNotOurs,  // any other route or form (HTTP/1.0, chunked, Expect, upgrade,
             // a %-escaped path, a malformed head): the Python path's
};

HeadVerdict read_infer_head(const char* data, size_t size, InferHead& out);

}  // namespace loopserve::http
