#include "serving/dispatch.h"

#include <sys/random.h>

#include <cerrno>
#include <system_error>

namespace loopserve {

uint16_t http_status(Status s) {
  switch (s) {
    case Status::kOk: return 200;
    case Status::kTimedOut: return 504;
    case Status::kModelError: return 500;
    case Status::kUnavailable: return 503;
  }
  return 500;
}

// The kernel's random bytes are taken 4 KiB at a time per thread: one system call per 256 ids.
std::string random_id() {
  thread_local unsigned char pool[4096];
  thread_local size_t used = sizeof pool;
  if (used + 16 > sizeof pool) {
    size_t got = 0;
    while (got < sizeof pool) {
      ssize_t n = ::getrandom(pool + got, sizeof pool - got, 0);
      if (n > 0) got += static_cast<size_t>(n);
      else if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    used = 0;
  }
  static const char* hex = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < 16; ++i) {
    out[2 * i] = hex[pool[used + i] >> 4];
    out[2 * i + 1] = hex[pool[used + i] & 15];
  }
  used += 16;
  return out;
}

namespace {

// The request's inputs in the model's declared order, viewing the tensors' memory.
std::vector<InputView> input_views(const BatcherConfig& config, std::vector<ipc::TensorIn>& tensors, bool raw) {
  const auto& specs = config.inputs;
  std::vector<InputView> views(specs.size());
  if (raw) {  // Triton's raw binary form: the body is the one input, rows by its size
    if (specs.size() != 1)
      throw InvalidInput("a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; model '" +
                         config.model_name + "' has " + std::to_string(specs.size()));
    const TensorSpec& spec = specs[0];
    const size_t item = dtype_size(spec.dtype);
    int64_t row_elems = 1;
    for (int64_t d : spec.dims) row_elems = d < 0 ? -1 : row_elems * d;
    if (item == 0 || row_elems < 0)
      throw InvalidInput("a raw binary request needs a fixed-size input; input '" + spec.name + "' is " +
                         std::string(dtype_name(spec.dtype)) + " with variable dims");
    const size_t row_bytes = static_cast<size_t>(row_elems) * item;
    const size_t nbytes = tensors[0].nbytes;
    std::vector<int64_t> shape = spec.dims;
    if (config.max_batch_size > 0) {
      if (row_bytes == 0 || nbytes % row_bytes)
        throw InvalidInput("raw binary body of " + std::to_string(nbytes) + " bytes is not a whole number of rows of input '" +
                           spec.name + "' (" + std::to_string(row_bytes) + " bytes each)");
      shape.insert(shape.begin(), static_cast<int64_t>(nbytes / row_bytes));
    } else if (nbytes != row_bytes) {
      throw InvalidInput("raw binary body of " + std::to_string(nbytes) + " bytes does not match input '" + spec.name +
                         "' (" + std::to_string(row_bytes) + " bytes)");
    }
    views[0] = InputView(spec.dtype, tensors[0].data, std::move(shape));
    views[0].nbytes = nbytes;
    return views;
  }
  std::vector<bool> seen(specs.size(), false);
  for (ipc::TensorIn& t : tensors) {
    size_t i = 0;
    while (i < specs.size() && specs[i].name != t.name) ++i;
    if (i == specs.size()) {
      std::string known;
      for (const auto& s : specs) known += (known.empty() ? "'" : ", '") + s.name + "'";
      throw InvalidInput("model '" + config.model_name + "' has no input '" + std::string(t.name) + "' (its inputs: " +
                         known + ")");
    }
    if (t.dtype != specs[i].dtype)
      throw InvalidInput("input '" + specs[i].name + "' has datatype " + std::string(dtype_name(t.dtype)) +
                         ", but model '" + config.model_name + "' expects " + std::string(dtype_name(specs[i].dtype)));
    views[i] = InputView(t.dtype, t.data, std::move(t.shape));
    views[i].nbytes = t.nbytes;
    seen[i] = true;
  }
  for (size_t i = 0; i < specs.size(); ++i)
    if (!seen[i]) throw InvalidInput("model '" + config.model_name + "' needs input '" + specs[i].name + "'");
  return views;
}

// Read as the Python router reads it (int() of ASCII digits, leading zeros and all); more than
// 18 significant digits is no version that can be loaded.
bool parse_version(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  int64_t v = 0;
  size_t significant = 0;
  for (char ch : text) {
    if (ch < '0' || ch > '9') return false;
    if (v == 0 && ch == '0') continue;
    if (++significant > 18) return false;
    v = v * 10 + (ch - '0');
  }
  *out = v;
  return true;
}

}  // namespace

Routed route_request(const RouteTable& table, std::string_view model, std::string_view version, std::string_view key,
                     std::vector<ipc::TensorIn>& tensors, bool raw) {
  auto found = table.models.find(model);
  if (found == table.models.end() || found->second->loaded.empty())
    throw Refusal{404, "unknown model '" + std::string(model) + "'"};
  const ModelRoute& route = *found->second;
  const VersionRoute* chosen;
  if (!version.empty()) {
    int64_t v = 0;
    chosen = parse_version(version, &v) ? route.find(v) : nullptr;
    if (chosen == nullptr)
      throw Refusal{404, "model '" + route.name + "' has no version '" + std::string(version) + "' loaded (loaded: " +
                             route.loaded_list() + ")"};
  } else {
    chosen = route.choose(key);
    if (chosen == nullptr) throw Refusal{404, "model '" + route.name + "' has no version taking traffic"};
  }
  Routed routed;
  for (const auto& v : route.loaded)
    if (v.get() == chosen) routed.answering = v;
  try {
    routed.views = input_views(routed.answering->batcher->config(), tensors, raw);
  } catch (const InvalidInput& e) {
    throw Refusal{400, e.what()};
  }
  for (const auto& s : route.shadows)
    if (s.get() != chosen) routed.shadows.push_back(s);
  return routed;
}

Batcher::Submitted submit_answering(Batcher& batcher, std::vector<InputView> views, uint64_t token,
                                    std::shared_ptr<CompletionSink> sink, int priority, int64_t timeout_us) {
  try {
    return batcher.submit(std::move(views), token, std::move(sink), priority, timeout_us, Batcher::Inline::kDeferred);
  } catch (const InvalidInput& e) {
    throw Refusal{400, e.what()};
  } catch (const QueueFull& e) {
    throw Refusal{429, e.what()};
  } catch (const Unavailable& e) {
    throw Refusal{503, e.what()};
  } catch (const std::invalid_argument& e) {
    throw Refusal{400, e.what()};
  }
}

bool submit_shadow(const std::shared_ptr<Batcher>& batcher, const std::vector<InputView>& views, uint64_t token,
                   std::shared_ptr<CompletionSink> sink, std::vector<std::shared_ptr<Batcher>>& deferred) {
  try {
    auto r = batcher->submit(views, token, std::move(sink), 0, -1, Batcher::Inline::kDeferred);
    if (r == Batcher::Submitted::kDeferred) deferred.push_back(batcher);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace loopserve
