// The device's measured limits, for performance ratios reported beside results.
#pragma once

namespace mf::bench {

struct Roofline {
  double copy_bytes_per_second = 0;  // device-to-device copy: bytes read + written per second
  double gemm_flops_per_second = 0;  // dense bf16 GEMM through cuBLAS (8192^3), fp32 accumulation
};

// Measures and prints the device's copy bandwidth and dense bf16 GEMM throughput.
Roofline MeasureRoofline();

}  // namespace mf::bench
