// An HTTP/1.1 answer's bytes, head and body in one buffer (one write), with the status line
// and headers uvicorn writes for the Python infer route (server/fastpath.py): `date`, the
// content type, `retry-after` on 429 and 503, `connection: close` when the connection ends,
// `content-length`.
//
// Thread-safety: free functions; the date is cached per thread and second.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace loopserve::http {

// Appends the whole answer to `out`: a JSON body (`content-type: application/json`), or with
// `json_length` >= 0 Triton's binary form (`application/octet-stream` and
// `inference-header-content-length`: the body's first json_length bytes are its JSON).
void append_answer(std::string& out, uint16_t status, bool keep_alive, std::string_view body,
                   int64_t json_length = -1);

}  // namespace loopserve::http
