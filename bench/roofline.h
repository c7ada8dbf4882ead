// The device's measured limits, for performance ratios reported beside results.
#pragma once

namespace mf::bench {

// Prints device-to-device copy bandwidth and dense bf16 GEMM throughput (cuBLAS).
void PrintRoofline();

}  // namespace mf::bench
