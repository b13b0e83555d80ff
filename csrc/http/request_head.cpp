#include "http/request_head.h"

#include <cctype>
#include <cstdint>

#include "picohttpparser.h"

namespace loopserve::http {

namespace {

constexpr size_t kMaxHeaders = 64;

// A header's value as a non-negative decimal of at most 18 digits (what fits int64).
bool decimal(std::string_view value, uint64_t* out) {
  if (value.empty() || value.size() > 18) return false;
  uint64_t v = 0;
  for (char ch : value) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + static_cast<uint64_t>(ch - '0');
  }
  *out = v;
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// A path segment the native path takes as a model name or version: printable ASCII with no
// %-escape, query or fragment (anything else goes to Python, which decodes as uvicorn does).
bool plain_segment(std::string_view s) {
  if (s.empty()) return false;
  for (char ch : s)
    if (ch <= 0x20 || ch >= 0x7f || ch == '%' || ch == '?' || ch == '#' || ch == '/') return false;
  return true;
}

// POST /v2/models/{m}[/versions/{v}]/infer
bool infer_path(std::string_view path, std::string_view* model, std::string_view* version) {
  constexpr std::string_view kPrefix = "/v2/models/", kInfer = "/infer", kVersions = "/versions/";
  if (path.size() <= kPrefix.size() + kInfer.size() || path.substr(0, kPrefix.size()) != kPrefix ||
      path.substr(path.size() - kInfer.size()) != kInfer)
    return false;
  std::string_view middle = path.substr(kPrefix.size(), path.size() - kPrefix.size() - kInfer.size());
  size_t slash = middle.find('/');
  if (slash == std::string_view::npos) {
    *model = middle;
    *version = {};
    return plain_segment(middle);
  }
  *model = middle.substr(0, slash);
  std::string_view rest = middle.substr(slash);
  if (rest.substr(0, kVersions.size()) != kVersions) return false;
  *version = rest.substr(kVersions.size());
  return plain_segment(*model) && plain_segment(*version);
}

}  // namespace

HeadVerdict read_infer_head(const char* data, size_t size, InferHead& out) {
  const char *method, *path;
  size_t method_len, path_len, num_headers = kMaxHeaders;
  int minor = 0;
  phr_header headers[kMaxHeaders];
  const int head = phr_parse_request(data, size, &method, &method_len, &path, &path_len, &minor, headers,
                                     &num_headers, 0);
  if (head == -2) return HeadVerdict::kPartial;
  if (head < 0 || minor != 1 || std::string_view(method, method_len) != "POST" ||
      !infer_path({path, path_len}, &out.model, &out.version))
    return HeadVerdict::kNotOurs;
  out.head_bytes = static_cast<size_t>(head);
  bool has_length = false;
  for (size_t i = 0; i < num_headers; ++i) {
    if (headers[i].name == nullptr) return HeadVerdict::kNotOurs;  // a folded header line
    const std::string_view name(headers[i].name, headers[i].name_len);
    const std::string_view value(headers[i].value, headers[i].value_len);
    if (iequals(name, "content-length")) {
      uint64_t v;
      if (has_length || !decimal(value, &v)) return HeadVerdict::kNotOurs;
      out.content_length = static_cast<size_t>(v);
      has_length = true;
    } else if (iequals(name, "inference-header-content-length")) {  // Triton's binary tensors
      uint64_t v;
      if (out.json_bytes >= 0 || !decimal(value, &v)) return HeadVerdict::kNotOurs;
      out.json_bytes = static_cast<int64_t>(v);
    } else if (iequals(name, "connection")) {
      if (iequals(value, "close")) out.keep_alive = false;
      else if (!iequals(value, "keep-alive")) return HeadVerdict::kNotOurs;
    } else if (iequals(name, "transfer-encoding") || iequals(name, "expect") || iequals(name, "upgrade")) {
      return HeadVerdict::kNotOurs;  // chunked bodies, 100-continue, upgrades
    } else if (iequals(name, "content-encoding") && !value.empty() && !iequals(value, "identity")) {
      return HeadVerdict::kNotOurs;  // a compressed body: the Python path's 415
    }
  }
  if (!has_length || (out.json_bytes >= 0 && static_cast<size_t>(out.json_bytes) > out.content_length))
    return HeadVerdict::kNotOurs;
  return HeadVerdict::kInfer;
}

}  // namespace loopserve::http
