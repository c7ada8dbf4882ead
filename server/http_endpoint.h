// An HTTP listener on its own thread: a cpp-httplib server bound to a host and port
// (0: a free one), served until Stop(); HTTPS when given a certificate. The metrics
// endpoint and the OpenAI API each own one.
#pragma once

#include <httplib.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mf::server {

struct HttpTls {
  std::string cert, key;  // PEM files
  std::string client_ca;  // when set, clients must present a certificate it signed
};

// Connections the kernel completes and queues while the accept thread is busy (Linux caps
// it at net.core.somaxconn). cpp-httplib listens with a backlog of 5, compiled into Debian's
// library: a burst of connections while the accept thread waits for a core, or while every
// serving thread is taken, overflows it, and the kernel then drops SYNs, which clients retry
// only after a second.
inline constexpr int kListenBacklog = 1024;

// A cpp-httplib server whose listening socket (a protected member) can be reached.
template <class Base>
class ListeningServer : public Base {
 public:
  using Base::Base;
  int listening_socket() const { return this->svr_sock_; }
};

class HttpEndpoint {
 public:
  explicit HttpEndpoint(const HttpTls* tls = nullptr) {
    if (tls == nullptr) {
      auto server = std::make_unique<ListeningServer<httplib::Server>>();
      listening_socket_ = [raw = server.get()] { return raw->listening_socket(); };
      http_ = std::move(server);
      return;
    }
    tls_ = true;
    auto server = std::make_unique<ListeningServer<httplib::SSLServer>>(
        tls->cert.c_str(), tls->key.c_str(), tls->client_ca.empty() ? nullptr : tls->client_ca.c_str());
    listening_socket_ = [raw = server.get()] { return raw->listening_socket(); };
    http_ = std::move(server);
  }
  ~HttpEndpoint() { Stop(); }

  httplib::Server& http() { return *http_; }
  int port() const { return port_; }

  // `what` names the endpoint in errors ("--http-port", "metrics").
  absl::Status Start(const std::string& host, int port, const std::string& what) {
    if (!http_->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": cannot load the TLS certificate, key or client CA (--tls-cert, --tls-key, --tls-client-ca)"));
    }
    const bool bound = port == 0 ? (port_ = http_->bind_to_any_port(host)) > 0 : http_->bind_to_port(host, port);
    if (!bound) return absl::UnavailableError(absl::StrCat(what, ": cannot listen on ", host, ":", port));
    if (port != 0) port_ = port;
    // listen() on a listening socket sets its backlog anew.
    if (::listen(listening_socket_(), kListenBacklog) != 0) {
      return absl::UnavailableError(absl::StrCat(what, ": cannot set the listen backlog on ", host, ":", port_));
    }
    listener_ = std::thread([this] { http_->listen_after_bind(); });
    return absl::OkStatus();
  }

  // Closes the listener and waits for the connections being served.
  void Stop() {
    http_->stop();
    if (listener_.joinable()) listener_.join();
  }
  bool tls() const { return tls_; }

 private:
  std::unique_ptr<httplib::Server> http_;
  std::function<int()> listening_socket_;
  bool tls_ = false;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace mf::server
