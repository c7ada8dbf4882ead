// How much host memory this process could still get, for sizing checks made before
// allocating (a failed large allocation aborts; with overcommit, the OOM killer strikes later).
#pragma once

#include <cstdint>

namespace mf {

// MemAvailable from /proc/meminfo (free memory plus reclaimable page cache); the free
// pages where that file cannot be read.
int64_t HostAvailableBytes();

}  // namespace mf
