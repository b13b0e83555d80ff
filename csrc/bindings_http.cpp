// Python bindings of the engine's native HTTP server for infer (csrc/http/). They convert,
// release the GIL where a call may wait, and call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "http/server.h"

namespace py = pybind11;

namespace loopserve {

void bind_http(py::module_& m) {
  using http::HttpServer;
  using http::ServerOptions;
  py::class_<HttpServer>(m, "HttpServer")
      .def(py::init([](std::shared_ptr<Router> router, int listen_fd, size_t max_body_bytes, size_t native_body_bytes,
                       size_t max_head_bytes, size_t max_connections, double keep_alive_s, double stall_s,
                       double overload_wait_ms, size_t overload_min_connections, std::string overload_message,
                       std::vector<double> latency_bounds, double send_timeout_s, double drain_s,
                       double handoff_wait_s) {
             ServerOptions o;
             o.max_body_bytes = max_body_bytes;
             o.native_body_bytes = native_body_bytes;
             o.max_head_bytes = max_head_bytes;
             o.max_connections = max_connections;
             o.keep_alive_s = keep_alive_s;
             o.stall_s = stall_s;
             o.overload_wait_ms = overload_wait_ms;
             o.overload_min_connections = overload_min_connections;
             o.overload_message = std::move(overload_message);
             o.latency_bounds = std::move(latency_bounds);
             o.send_timeout_s = send_timeout_s;
             o.drain_s = drain_s;
             o.handoff_wait_s = handoff_wait_s;
             return std::make_unique<HttpServer>(std::move(router), listen_fd, std::move(o));
           }),
           py::arg("router"), py::arg("listen_fd"), py::arg("max_body_bytes"), py::arg("native_body_bytes"),
           py::arg("max_head_bytes"), py::arg("max_connections"), py::arg("keep_alive_s"), py::arg("stall_s"),
           py::arg("overload_wait_ms"), py::arg("overload_min_connections"), py::arg("overload_message"),
           py::arg("latency_bounds"), py::arg("send_timeout_s") = 30.0, py::arg("drain_s") = 30.0,
           py::arg("handoff_wait_s") = 10.0,
           "Serves infer on listen_fd (a bound, listening TCP socket, taken) from a thread of its own.")
      .def("set_handoff", &HttpServer::set_handoff, py::arg("index"), py::arg("fd"),
           "front end `index` takes handed-off connections on this Unix socket (taken)")
      .def("stop", &HttpServer::stop, py::call_guard<py::gil_scoped_release>(),
           "Stops accepting and reading; answers due go out for drain_s at most, then returns.")
      .def("stats", [](const HttpServer& server) {
        http::ServerStats s;
        {
          py::gil_scoped_release release;
          s = server.stats();
        }
        py::dict d;
        d["accepted"] = s.accepted;
        d["served"] = s.served;
        d["handed_off"] = s.handed_off;
        d["handoff_failed"] = s.handoff_failed;
        d["send_timeouts"] = s.send_timeouts;
        d["answers_by_loop"] = s.answers_by_loop;
        d["connections"] = s.connections;
        d["overload_refused"] = s.overload_refused;
        py::dict latency;
        for (const auto& [key, h] : s.latency)
          latency[py::make_tuple(key.first, std::to_string(key.second))] = py::make_tuple(h.counts, h.sum);
        d["latency"] = latency;
        return d;
      });
}

}  // namespace loopserve
