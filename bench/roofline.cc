#include "bench/roofline.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>

namespace mf::bench {

Roofline MeasureRoofline() {
  cudaDeviceProp properties{};
  cudaGetDeviceProperties(&properties, 0);
  const size_t bytes = size_t{2} << 30;
  void *source = nullptr, *destination = nullptr;
  cudaMalloc(&source, bytes);
  cudaMalloc(&destination, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(start);
  constexpr int kCopies = 10;
  for (int i = 0; i < kCopies; ++i) cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float copy_ms = 0;
  cudaEventElapsedTime(&copy_ms, start, stop);
  // A copy reads and writes every byte.
  const double bandwidth = 2.0 * bytes * kCopies / (copy_ms * 1e-3);
  cudaFree(source);
  cudaFree(destination);

  const int n = 8192;
  void *a, *b, *c;
  cudaMalloc(&a, size_t{2} * n * n);
  cudaMalloc(&b, size_t{2} * n * n);
  cudaMalloc(&c, size_t{4} * n * n);
  cudaMemset(a, 0, size_t{2} * n * n);
  cudaMemset(b, 0, size_t{2} * n * n);
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float one = 1, zero = 0;
  auto gemm = [&] {
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &zero, c,
                 CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  gemm();
  cudaEventRecord(start);
  constexpr int kGemms = 10;
  for (int i = 0; i < kGemms; ++i) gemm();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float gemm_ms = 0;
  cudaEventElapsedTime(&gemm_ms, start, stop);
  const double flops = 2.0 * n * n * n * kGemms / (gemm_ms * 1e-3);
  cublasDestroy(handle);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  std::printf("device %s: copy bandwidth %.0f GB/s, bf16 GEMM %.0f TFLOP/s (cuBLAS, %d^3)\n", properties.name,
              bandwidth / 1e9, flops / 1e12, n);
  return {bandwidth, flops};
}

}  // namespace mf::bench
