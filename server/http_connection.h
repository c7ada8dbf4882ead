// Whether the client of an HTTP request is still there. cpp-httplib 0.11 gives a handler
// no access to its connection, so the connection's socket is found by its addresses; a
// handler that waits (a non-streamed completion) polls it and cancels the work when the
// client has closed it, as gRPC cancels a call whose client went away.
#pragma once

#include <httplib.h>

namespace mf::server {

class HttpConnection {
 public:
  // `server_port`: the port the request came to (httplib 0.11 leaves Request::local_port unset).
  HttpConnection(const httplib::Request& request, int server_port);
  // True once the peer has closed its side (an orderly close or a reset). False when the
  // socket could not be found: the request then runs to its end.
  bool PeerClosed() const;

 private:
  int socket_ = -1;
};

}  // namespace mf::server
