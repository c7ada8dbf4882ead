// The HTTP endpoint of --metrics-port: GET /metrics (Prometheus text format) and GET
// /health, 404 for anything else. cpp-httplib with threads of the normal stack size
// (civetweb's small stacks overflowed once libraries with large static TLS loaded), a
// bounded number of connections served at once, and short idle and read timeouts, so
// neither a browser nor a few idle sockets can crash it or keep a scrape waiting.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/collectable.h"
#include "server/http_endpoint.h"

namespace mf::server {

struct MetricsHttpOptions {
  int max_connections = 32;       // served at once; more wait in the accept backlog
  int idle_timeout_seconds = 2;   // a connection with no request in flight is closed after this
  int read_timeout_seconds = 5;   // per read of a request that has started
};

class MetricsHttpServer {
 public:
  MetricsHttpServer(std::vector<std::weak_ptr<prometheus::Collectable>> collectables, MetricsHttpOptions options = {});

  // Binds `host`:`port` (0: a free port) and starts serving on its own threads.
  absl::Status Start(const std::string& host, int port);
  int port() const { return endpoint_.port(); }

 private:
  std::string Exposition() const;

  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_;
  MetricsHttpOptions options_;
  HttpEndpoint endpoint_;  // last: stopped first, while the members its handlers use live
};

}  // namespace mf::server
