#include "http/response.h"

#include <ctime>

namespace loopserve::http {

namespace {

std::string_view status_line(uint16_t status) {
  switch (status) {  // the statuses the native path answers; reasons as Python's http.HTTPStatus
    case 200: return "HTTP/1.1 200 OK\r\n";
    case 400: return "HTTP/1.1 400 Bad Request\r\n";
    case 404: return "HTTP/1.1 404 Not Found\r\n";
    case 413: return "HTTP/1.1 413 Request Entity Too Large\r\n";
    case 429: return "HTTP/1.1 429 Too Many Requests\r\n";
    case 500: return "HTTP/1.1 500 Internal Server Error\r\n";
    case 503: return "HTTP/1.1 503 Service Unavailable\r\n";
    case 504: return "HTTP/1.1 504 Gateway Timeout\r\n";
    default: return "HTTP/1.1 500 Internal Server Error\r\n";
  }
}

// "date: Sat, 05 Dec 2026 03:29:37 GMT\r\n" (RFC 9110's IMF-fixdate, as uvicorn writes it),
// made once a second per thread.
std::string_view date_header() {
  thread_local time_t made = 0;
  thread_local char text[64];
  thread_local size_t len = 0;
  const time_t now = ::time(nullptr);
  if (now != made) {
    tm t{};
    ::gmtime_r(&now, &t);
    len = ::strftime(text, sizeof text, "date: %a, %d %b %Y %H:%M:%S GMT\r\n", &t);
    made = now;
  }
  return {text, len};
}

}  // namespace

void append_answer(std::string& out, uint16_t status, bool keep_alive, std::string_view body, int64_t json_length) {
  out.append(status_line(status));
  out.append(date_header());
  if (json_length < 0) {
    out.append("content-type: application/json\r\n");
  } else {
    out.append("content-type: application/octet-stream\r\ninference-header-content-length: ");
    out.append(std::to_string(json_length));
    out.append("\r\n");
  }
  if (status == 429 || status == 503) out.append("retry-after: 1\r\n");
  if (!keep_alive) out.append("connection: close\r\n");
  out.append("content-length: ");
  out.append(std::to_string(body.size()));
  out.append("\r\n\r\n");
  out.append(body);
}

}  // namespace loopserve::http
