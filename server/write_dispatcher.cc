#include "server/write_dispatcher.h"

namespace mf::server {

SerialExecutor& WriteDispatcher() {
  static SerialExecutor* dispatcher = new SerialExecutor();
  return *dispatcher;
}

}  // namespace mf::server
