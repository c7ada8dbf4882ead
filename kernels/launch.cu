#include <atomic>

#include "kernels/launch.cuh"

namespace mf::kernels {
namespace {

std::atomic<bool> overlapped{false};

}  // namespace

void SetOverlappedLaunches(bool on) { overlapped.store(on, std::memory_order_relaxed); }

bool OverlappedLaunches() { return overlapped.load(std::memory_order_relaxed); }

}  // namespace mf::kernels
