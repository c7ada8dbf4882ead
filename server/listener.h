// The gRPC port's listening socket, owned here rather than by gRPC. gRPC 1.51's own
// listener stops accepting for good after one accept fails with EMFILE, leaving a live
// but deaf server; this accept loop cannot die that way. It sheds (accepts and closes)
// connections once descriptors run near the process limit, keeps a reserve descriptor to
// shed even at the limit, and hands every other connection to gRPC
// (AddInsecureChannelFromFd). Plaintext only: TLS needs gRPC's own listener.
#pragma once

#include <grpcpp/server.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace mf::server {

class Listener {
 public:
  // Binds and listens on `host`:`port` (port 0: a free one); nothing is accepted yet.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(const std::string& host, int port);
  ~Listener();  // Close()

  int port() const { return port_; }
  // Starts accepting into `server`, which must outlive this listener or its Close().
  void Start(grpc::Server* server);
  // Stops accepting and closes the socket: new connections are refused from here on.
  void Close();
  // Connections closed unserved because descriptors ran low.
  int64_t shed_connections() const { return shed_.load(); }

 private:
  Listener(int socket, int port);
  void AcceptLoop(grpc::Server* server);
  void AcceptReady(grpc::Server* server);

  int socket_;
  int port_;
  int wake_[2] = {-1, -1};  // written to by Close() to end the loop's poll
  int reserve_ = -1;        // an fd kept open to be given up when accept hits EMFILE
  std::thread loop_;
  std::atomic<int64_t> shed_{0};
};

// Raises the soft open-file limit to the hard one (a server holds a descriptor per
// connection); returns the limit now in force.
int64_t RaiseOpenFileLimit();

// The client address of a call: gRPC names connections handed over as descriptors
// "fd:N"; this gives the address the listener accepted them from ("ipv4:1.2.3.4:5678").
std::string ClientAddress(const std::string& grpc_peer);

}  // namespace mf::server
