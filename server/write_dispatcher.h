// The thread that starts gRPC stream writes on behalf of the engine. Starting a write
// (StartWrite, Finish) runs the transport's work inline on the calling thread, ~10 us a
// call: at 256 streams that is milliseconds of every engine step. The update callbacks
// queue the stream's pump here instead and return at once.
#pragma once

#include "engine/base/serial_executor.h"

namespace mf::server {

// The process's dispatcher. It is never destroyed: calls still finish on it while the
// server shuts down.
SerialExecutor& WriteDispatcher();

}  // namespace mf::server
