#include "server/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/server_posix.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace mf::server {
namespace {

// Descriptors kept free for everything else (gRPC's own pipes, the metrics endpoint, log
// and checkpoint files): connections whose descriptor lands in this margin are shed.
constexpr int64_t kSpareDescriptors = 64;

// Client addresses by descriptor, for ClientAddress. A descriptor is only reused after
// its connection closed, and a call only asks while its connection is open.
absl::Mutex peers_mutex;
absl::flat_hash_map<int, std::string>& Peers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(peers_mutex) {
  static auto* peers = new absl::flat_hash_map<int, std::string>();
  return *peers;
}

std::string AddressName(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto* ipv4 = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &ipv4->sin_addr, text, sizeof(text));
    return absl::StrCat("ipv4:", text, ":", ntohs(ipv4->sin_port));
  }
  const auto* ipv6 = reinterpret_cast<const sockaddr_in6*>(&address);
  inet_ntop(AF_INET6, &ipv6->sin6_addr, text, sizeof(text));
  return absl::StrCat("ipv6:[", text, "]:", ntohs(ipv6->sin6_port));
}

int64_t OpenFileLimit() {
  rlimit limit{};
  return getrlimit(RLIMIT_NOFILE, &limit) == 0 ? static_cast<int64_t>(limit.rlim_cur) : 1024;
}

}  // namespace

int64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  return OpenFileLimit();
}

std::string ClientAddress(const std::string& grpc_peer) {
  if (grpc_peer.rfind("fd:", 0) != 0) return grpc_peer;
  const int fd = std::atoi(grpc_peer.c_str() + 3);
  absl::MutexLock lock(&peers_mutex);
  auto it = Peers().find(fd);
  return it == Peers().end() ? grpc_peer : it->second;
}

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int error = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found); error != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--host ", host, ": ", gai_strerror(error)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addresses(found, freeaddrinfo);
  const int fd = socket(found->ai_family, found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, found->ai_protocol);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (bind(fd, found->ai_addr, found->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ", error));
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  const int bound_port = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                                          : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return std::unique_ptr<Listener>(new Listener(fd, bound_port));
}

Listener::Listener(int socket, int port) : socket_(socket), port_(port) {
  if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
  reserve_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

Listener::~Listener() {
  Close();
  for (int fd : {wake_[0], wake_[1], reserve_}) {
    if (fd >= 0) close(fd);
  }
}

void Listener::Start(grpc::Server* server) {
  loop_ = std::thread([this, server] { AcceptLoop(server); });
}

void Listener::Close() {
  if (loop_.joinable()) {
    const char stop = 1;
    (void)!write(wake_[1], &stop, 1);
    loop_.join();
  }
  if (socket_ >= 0) {
    close(socket_);
    socket_ = -1;
  }
}

void Listener::AcceptLoop(grpc::Server* server) {
  while (true) {
    pollfd watched[2] = {{socket_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (poll(watched, 2, -1) < 0 && errno != EINTR) return;
    if (watched[1].revents != 0) return;  // Close()
    if (watched[0].revents != 0) AcceptReady(server);
  }
}

// Accepts every pending connection: hands it to gRPC, or sheds it when descriptors run low.
void Listener::AcceptReady(grpc::Server* server) {
  const int64_t limit = OpenFileLimit();
  while (true) {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    const int fd = accept4(socket_, reinterpret_cast<sockaddr*>(&address), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && reserve_ >= 0) {
        // At the limit: give up the reserve to take the connection off the queue and close
        // it (the client sees a reset, not a hang), then take the reserve back.
        close(reserve_);
        const int dropped = accept4(socket_, nullptr, nullptr, SOCK_CLOEXEC);
        if (dropped >= 0) {
          close(dropped);
          shed_.fetch_add(1);
        }
        reserve_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        continue;
      }
      if (errno == EMFILE || errno == ENFILE) usleep(10'000);  // no reserve: don't spin on poll
      return;  // EAGAIN: nothing more pending (or an error poll will report again)
    }
    // Descriptors are allocated lowest first, so this one's number bounds how many are open.
    if (fd >= limit - kSpareDescriptors) {
      close(fd);
      shed_.fetch_add(1);
      continue;
    }
    const int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    {
      absl::MutexLock lock(&peers_mutex);
      Peers()[fd] = AddressName(address);
    }
    grpc::AddInsecureChannelFromFd(server, fd);
  }
}

}  // namespace mf::server
