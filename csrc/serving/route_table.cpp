#include "serving/route_table.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

namespace loopserve {

uint32_t crc32(std::string_view data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

const VersionRoute* ModelRoute::find(int64_t version) const {
  for (const auto& v : loaded)
    if (v->version == version) return v.get();
  return nullptr;
}

const VersionRoute* ModelRoute::choose(std::string_view key) const {
  if (answering.empty()) return nullptr;
  double draw;
  if (!key.empty()) {
    draw = static_cast<double>(crc32(key) % 1000000u) / 1e6;
  } else {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    draw = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  }
  for (const auto& [bound, route] : answering)
    if (draw < bound) return route.get();
  return answering.back().second.get();
}

std::string ModelRoute::loaded_list() const {
  std::string out = "[";
  for (size_t i = 0; i < loaded.size(); ++i) out += (i ? ", " : "") + std::to_string(loaded[i]->version);
  return out + "]";
}

Router::Router() : current_(std::make_shared<const RouteTable>()) {}

std::shared_ptr<const RouteTable> Router::snapshot() const { return std::atomic_load(&current_); }

void Router::set_model(std::shared_ptr<const ModelRoute> route) {
  std::lock_guard<std::mutex> lock(write_mu_);
  auto next = std::make_shared<RouteTable>(*std::atomic_load(&current_));
  next->models[route->name] = std::move(route);
  publish(std::move(next));
}

void Router::remove_model(const std::string& name) {
  std::lock_guard<std::mutex> lock(write_mu_);
  auto next = std::make_shared<RouteTable>(*std::atomic_load(&current_));
  next->models.erase(name);
  publish(std::move(next));
}

void Router::publish(std::shared_ptr<const RouteTable> table) {
  std::shared_ptr<const RouteTable> old = std::atomic_exchange(&current_, std::move(table));
  retired_.emplace_back(old);
}

void Router::wait_quiescent() {
  std::vector<std::weak_ptr<const RouteTable>> waiting;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    waiting = retired_;
  }
  // The ingress holds a snapshot for one round of routing and submitting: microseconds.
  for (auto& w : waiting)
    while (!w.expired()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  std::lock_guard<std::mutex> lock(write_mu_);
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(), [](const auto& w) { return w.expired(); }),
                 retired_.end());
}

}  // namespace loopserve
