// Which served version answers a request, for the engine's native ingress: the routing
// state of every model as an immutable snapshot, swapped whole on every change.
//
// The Python VersionRouter (python/loopserve/serving/router.py) decides (weights, shadows,
// promotion, retirement) and publishes each new state here; the ingress reads one snapshot
// per request with no lock held while it routes and submits. A version leaves a snapshot
// before it is stopped: wait_quiescent() returns once no thread still holds a snapshot
// published before the call, so nothing can be submitted to a batcher after its stop().
//
// Thread-safety: Router may be used from any thread; snapshots are immutable.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "batcher.h"

namespace loopserve {

class FeedbackTap;

struct VersionRoute {
  int64_t version = 0;
  std::shared_ptr<Batcher> batcher;
  std::shared_ptr<FeedbackTap> feedback;  // records its predictions by request id; may be null
};

struct ModelRoute {
  std::string name;
  std::vector<std::shared_ptr<const VersionRoute>> loaded;  // every loaded version, by number
  // The versions that answer, with the upper bound of each one's share of [0, 1).
  std::vector<std::pair<double, std::shared_ptr<const VersionRoute>>> answering;
  std::vector<std::shared_ptr<const VersionRoute>> shadows;  // get a copy, never answer

  const VersionRoute* find(int64_t version) const;
  // The answering version for a request: by the routing key when there is one (the same key
  // always lands on the same version, as the Python router places it), else at random.
  const VersionRoute* choose(std::string_view key) const;
  std::string loaded_list() const;  // "[1, 2]", for error messages
};

struct RouteTable {
  std::map<std::string, std::shared_ptr<const ModelRoute>, std::less<>> models;
};

class Router {
 public:
  Router();
  void set_model(std::shared_ptr<const ModelRoute> route);  // adds or replaces by name
  void remove_model(const std::string& name);
  std::shared_ptr<const RouteTable> snapshot() const;
  // Blocks until every snapshot taken before this call has been let go.
  void wait_quiescent();

 private:
  void publish(std::shared_ptr<const RouteTable> table);  // with write_mu_ held

  std::mutex write_mu_;  // serialises changes
  std::shared_ptr<const RouteTable> current_;  // read and written with std::atomic_load/store
  std::vector<std::weak_ptr<const RouteTable>> retired_;  // guarded by write_mu_
};

// zlib's CRC-32, as Python's zlib.crc32 computes it (keys route alike in both routers).
uint32_t crc32(std::string_view data);

}  // namespace loopserve
