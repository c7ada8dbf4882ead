// A mixture's router for decode-sized batches: gate logits [T, E] =
// gelu_exact(x · w1ᵀ + b1) · w2ᵀ in two small kernels: fp32 GEMVs for a handful of tokens,
// the first product on TF32 tensor cores for up to ~1,000 (bf16 mode). A GEMM library
// call per product (plus bias and activation passes) costs several launches and
// reads the fp32 gate weights at a fraction of memory speed when T is a handful.
#pragma once

#include <cuda_runtime.h>

namespace mf::kernels {

// Up to this many tokens the router kernels beat a GEMM library (each block rereads its
// gate rows for every 8 tokens).
constexpr int kMaxRouterGemvTokens = 16;

// Whether RouterGemv handles these sizes (x rows of `d` floats read 16 bytes at a time).
bool RouterGemvSupports(int num_tokens, int d);

// x [T, d], w1 [g, d], b1 [g], w2 [E, g] (nn.Linear layouts, fp32); hidden [T, g] is
// scratch; logits [T, E].
cudaError_t RouterGemv(const float* x, int num_tokens, int d, const float* w1, const float* b1, int g, const float* w2,
                       int num_experts, float* hidden, float* logits, cudaStream_t stream);

// Decode-sized batches beyond that, in bf16 mode: the first product on TF32 tensor cores
// (operands rounded to TF32, fp32 sums, as a TF32 GEMM library call) with the bias and gelu
// in its epilogue, then the same second product. Each block rereads its 32 gate rows for
// every 16 tokens (about T x 96 KB of L2 reads at d = 1024), so prompt-sized batches are
// left to the GEMM library. Same arguments as RouterGemv.
constexpr int kMaxRouterMmaTokens = 1024;
bool RouterMmaSupports(int num_tokens, int d);
cudaError_t RouterMma(const float* x, int num_tokens, int d, const float* w1, const float* b1, int g, const float* w2,
                      int num_experts, float* hidden, float* logits, cudaStream_t stream);

}  // namespace mf::kernels
