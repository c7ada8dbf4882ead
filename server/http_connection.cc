#include "server/http_connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <string>

namespace mf::server {
namespace {

// "address", port of a socket address (IPv4-mapped IPv6 addresses as IPv4, as httplib
// reports them).
bool AddressOf(const sockaddr_storage& address, std::string* host, int* port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
    *port = ntohs(v4.sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
    *port = ntohs(v6.sin6_port);
  } else {
    return false;
  }
  *host = text;
  if (host->rfind("::ffff:", 0) == 0 && host->find('.') != std::string::npos) *host = host->substr(7);
  return true;
}

bool Matches(int fd, const httplib::Request& request, int server_port) {
  sockaddr_storage local{}, peer{};
  socklen_t local_length = sizeof(local), peer_length = sizeof(peer);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) return false;
  std::string host;
  int port = 0;
  if (!AddressOf(local, &host, &port) || port != server_port) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) return false;
  return AddressOf(peer, &host, &port) && port == request.remote_port && host == request.remote_addr;
}

}  // namespace

HttpConnection::HttpConnection(const httplib::Request& request, int server_port) {
  if (request.ssl != nullptr) {
    socket_ = SSL_get_fd(request.ssl);
    return;
  }
  DIR* descriptors = opendir("/proc/self/fd");
  if (descriptors == nullptr) return;
  while (const dirent* entry = readdir(descriptors)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(descriptors)) continue;
    if (Matches(static_cast<int>(fd), request, server_port)) {
      socket_ = static_cast<int>(fd);
      break;
    }
  }
  closedir(descriptors);
}

bool HttpConnection::PeerClosed() const {
  if (socket_ < 0) return false;
  char byte;
  const ssize_t received = recv(socket_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return received == 0 || (received < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

}  // namespace mf::server
