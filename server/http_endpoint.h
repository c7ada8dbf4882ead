// An HTTP listener on its own thread: a cpp-httplib server bound to a host and port
// (0: a free one), served until Stop(). The metrics endpoint and the OpenAI API each own one.
#pragma once

#include <httplib.h>

#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mf::server {

class HttpEndpoint {
 public:
  ~HttpEndpoint() { Stop(); }

  httplib::Server& http() { return http_; }
  int port() const { return port_; }

  // `what` names the endpoint in errors ("--http-port", "metrics").
  absl::Status Start(const std::string& host, int port, const std::string& what) {
    const bool bound = port == 0 ? (port_ = http_.bind_to_any_port(host)) > 0 : http_.bind_to_port(host, port);
    if (!bound) return absl::UnavailableError(absl::StrCat(what, ": cannot listen on ", host, ":", port));
    if (port != 0) port_ = port;
    listener_ = std::thread([this] { http_.listen_after_bind(); });
    return absl::OkStatus();
  }

  // Closes the listener and waits for the connections being served.
  void Stop() {
    http_.stop();
    if (listener_.joinable()) listener_.join();
  }

 private:
  httplib::Server http_;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace mf::server
