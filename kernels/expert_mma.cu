#include <mma.h>

#include <algorithm>

#include "kernels/activations.cuh"
#include "kernels/expert_mma.h"

namespace mf::kernels {
namespace {

using namespace nvcuda;

constexpr int kThreads = 128;  // four warps side by side over the tile's columns
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 8;  // bf16 values per 16-byte copy

// A tile shape and its cp.async pipeline depth. Decode-sized mixtures are bound by the
// weight bytes in flight, prompt-sized ones by the products; each wants its own shape.
template <int kBlockMValue, int kBlockNValue, int kBlockKValue, int kStagesValue>
struct Tile {
  static constexpr int kBlockM = kBlockMValue, kBlockN = kBlockNValue, kBlockK = kBlockKValue, kStages = kStagesValue;
  static constexpr int kWarpN = kBlockN / kWarps;  // each warp owns kWarpN columns
  static constexpr int kFragmentsN = kWarpN / 16;
  static constexpr int kFragmentsM = kBlockM / 16;
  // Rows padded by 16 bytes so fragment loads of consecutive rows hit different banks.
  static constexpr int kLdA = kBlockK + 8, kLdB = kBlockN + 8;
  static_assert(kWarpN % 16 == 0 && kBlockM % 16 == 0 && kBlockK % 16 == 0 && kStages >= 2);
};

template <typename T, int kHalves>
struct StageTiles {
  __nv_bfloat16 a[kHalves][T::kBlockM][T::kLdA];
  __nv_bfloat16 b[T::kBlockK][T::kLdB];
};

template <typename T, int kHalves>
constexpr size_t SharedBytes() {
  return T::kStages * sizeof(StageTiles<T, kHalves>) + kWarps * 16 * 16 * sizeof(float);
}

// 16 bytes from global to shared memory without passing through registers; `valid` false
// writes zeros (the source is not read), which pads ragged tiles.
__device__ __forceinline__ void CopyAsync16(void* shared, const void* global, bool valid) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CommitCopies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void WaitCopies() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

__device__ __forceinline__ void Store(float* out, float value) { *out = value; }
__device__ __forceinline__ void Store(__nv_bfloat16* out, float value) { *out = __float2bfloat16(value); }

struct TileRows {
  int expert;  // -1: this block has no tile
  int begin;   // first row of the tile
  int end;     // one past the expert's last row
};

// Tiles are numbered expert by expert, ceil(count / block_m) each. Warp 0 scans the
// segment sizes 32 experts at a time to find which expert `tile` falls in.
__device__ TileRows FindTile(const int32_t* offsets, int num_experts, int block_m, int tile) {
  __shared__ TileRows found;
  if (threadIdx.x == 0) found.expert = -1;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int tiles_before = 0;
    for (int base = 0; base < num_experts; base += 32) {
      const int expert = base + lane;
      const int count = expert < num_experts ? offsets[expert + 1] - offsets[expert] : 0;
      const int tiles = (count + block_m - 1) / block_m;
      int inclusive = tiles;
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const int first = tiles_before + inclusive - tiles;
      if (tile >= first && tile < first + tiles) {
        found = {expert, offsets[expert] + (tile - first) * block_m, offsets[expert + 1]};
      }
      tiles_before += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  return found;
}

template <typename T, int kHalves, typename OutT>
__global__ void __launch_bounds__(kThreads)
    ExpertMmaKernel(const __nv_bfloat16* __restrict__ a, int64_t half_stride, int k,
                    const int32_t* __restrict__ offsets, int num_experts, const __nv_bfloat16* __restrict__ weights,
                    int n, MmaEpilogue epilogue, OutT* __restrict__ out) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // bf16 tensor cores (sm_80 on)
  extern __shared__ __align__(128) unsigned char shared[];
  auto* stages = reinterpret_cast<StageTiles<T, kHalves>*>(shared);
  float* scratch = reinterpret_cast<float*>(shared + T::kStages * sizeof(StageTiles<T, kHalves>));

  const TileRows tile = FindTile(offsets, num_experts, T::kBlockM, blockIdx.y);
  if (tile.expert < 0) return;
  const int rows = min(T::kBlockM, tile.end - tile.begin);
  const int n0 = blockIdx.x * T::kBlockN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const __nv_bfloat16* matrix = weights + static_cast<int64_t>(tile.expert) * k * n;

  auto load_stage = [&](int stage, int k_tile) {
    const int k0 = k_tile * T::kBlockK;
    StageTiles<T, kHalves>& tiles = stages[stage];
    // Weights first: they come from memory, the activations mostly from L2.
    constexpr int kChunksPerWeightRow = T::kBlockN / kChunk;
#pragma unroll
    for (int c = threadIdx.x; c < T::kBlockK * kChunksPerWeightRow; c += kThreads) {
      const int row = c / kChunksPerWeightRow, col = (c % kChunksPerWeightRow) * kChunk;
      const bool valid = k0 + row < k && n0 + col < n;
      const __nv_bfloat16* source = valid ? matrix + static_cast<int64_t>(k0 + row) * n + n0 + col : matrix;
      CopyAsync16(&tiles.b[row][col], source, valid);
    }
    constexpr int kChunksPerRow = T::kBlockK / kChunk;
    // Rows past the segment are neither read nor multiplied (see the fragment loop), so
    // only the rounded-up rows of the last fragment are filled.
    const int filled_rows = (rows + 15) / 16 * 16;
    for (int c = threadIdx.x; c < kHalves * filled_rows * kChunksPerRow; c += kThreads) {
      const int half = c / (filled_rows * kChunksPerRow), row = (c / kChunksPerRow) % filled_rows;
      const int col = (c % kChunksPerRow) * kChunk;
      const bool valid = row < rows && k0 + col < k;
      const __nv_bfloat16* source =
          valid ? a + half * half_stride + static_cast<int64_t>(tile.begin + row) * k + k0 + col : a;
      CopyAsync16(&tiles.a[half][row][col], source, valid);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> accumulators[T::kFragmentsM][T::kFragmentsN];
  for (auto& row : accumulators) {
    for (auto& fragment : row) wmma::fill_fragment(fragment, 0.0f);
  }
  const int k_tiles = (k + T::kBlockK - 1) / T::kBlockK;
  for (int stage = 0; stage < T::kStages - 1; ++stage) {
    if (stage < k_tiles) load_stage(stage, stage);
    CommitCopies();
  }
  for (int k_tile = 0; k_tile < k_tiles; ++k_tile) {
    WaitCopies<T::kStages - 2>();
    __syncthreads();  // this tile is visible to all, and everyone is done with the stage refilled next
    const int next = k_tile + T::kStages - 1;
    if (next < k_tiles) load_stage(next % T::kStages, next);
    CommitCopies();
    const StageTiles<T, kHalves>& tiles = stages[k_tile % T::kStages];
#pragma unroll
    for (int kk = 0; kk < T::kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b[T::kFragmentsN];
#pragma unroll
      for (int j = 0; j < T::kFragmentsN; ++j) {
        wmma::load_matrix_sync(b[j], &tiles.b[kk][warp * T::kWarpN + j * 16], T::kLdB);
      }
      // Fully unrolled (fragments stay in registers); rows past the segment are zeros, so
      // their products are skipped.
#pragma unroll
      for (int i = 0; i < T::kFragmentsM; ++i) {
        if (i * 16 < rows) {
#pragma unroll
          for (int half = 0; half < kHalves; ++half) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fragment_a;
            wmma::load_matrix_sync(fragment_a, &tiles.a[half][i * 16][kk], T::kLdA);
#pragma unroll
            for (int j = 0; j < T::kFragmentsN; ++j) {
              wmma::mma_sync(accumulators[i][j], fragment_a, b[j], accumulators[i][j]);
            }
          }
        }
      }
    }
  }
  WaitCopies<0>();

  // Each warp moves its 16x16 fragments through shared memory to write bounded rows.
  float* staged = scratch + warp * 16 * 16;
#pragma unroll
  for (int i = 0; i < T::kFragmentsM; ++i) {
    if (i * 16 >= rows) continue;
#pragma unroll
    for (int j = 0; j < T::kFragmentsN; ++j) {
      wmma::store_matrix_sync(staged, accumulators[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 16 * 16; e += 32) {
        const int row = i * 16 + e / 16, col = n0 + warp * T::kWarpN + j * 16 + e % 16;
        if (row < rows && col < n) {
          const float value = staged[e];
          Store(&out[static_cast<int64_t>(tile.begin + row) * n + col],
                epilogue == MmaEpilogue::kGeluNew ? GeluNewValue(value) : value);
        }
      }
      __syncwarp();
    }
  }
#endif
}

template <typename T, int kHalves, typename OutT>
cudaError_t Launch(const __nv_bfloat16* a, int64_t half_stride, int num_rows, int k, const int32_t* offsets,
                   int num_experts, const __nv_bfloat16* weights, int n, MmaEpilogue epilogue, OutT* out,
                   cudaStream_t stream) {
  constexpr size_t kShared = SharedBytes<T, kHalves>();
  const cudaError_t configured = cudaFuncSetAttribute(
      ExpertMmaKernel<T, kHalves, OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kShared));
  if (configured != cudaSuccess) return configured;
  // Every expert may end in a partial tile: at most rows / kBlockM + experts tiles.
  const int64_t max_tiles = num_rows / T::kBlockM + num_experts;
  if (max_tiles > 65535) return cudaErrorInvalidValue;
  const dim3 grid((n + T::kBlockN - 1) / T::kBlockN, static_cast<unsigned>(max_tiles));
  ExpertMmaKernel<T, kHalves, OutT><<<grid, kThreads, kShared, stream>>>(a, half_stride, k, offsets, num_experts,
                                                                          weights, n, epilogue, out);
  return cudaGetLastError();
}

// The tile shape by the mean rows per expert, measured inside the decode step on an H200
// (Nsight Compute, MoLM-350M-4B at 256 tokens; bench/notes/batched_decode.md): 64-wide,
// 64-deep tiles give the 16-expert attention mixtures (mean 32 rows) enough blocks and bytes
// in flight (28.8 us a product against 36.9 with 128 x 32 tiles); for the 32-expert MLP
// mixtures (mean 16) they measured slower in the step (80 us) than short 16-row tiles,
// although faster alone. Splitting k across blocks measured no faster.
using Decode16 = Tile<16, 128, 32, 3>;  // mean <= 16 rows: the MLP mixtures at 256 tokens
using Decode32 = Tile<32, 64, 64, 4>;   // mean <= 32 rows: the attention mixtures at 256 tokens
using Mid64 = Tile<64, 128, 32, 3>;
using Prompt = Tile<128, 128, 32, 3>;

template <int kHalves, typename OutT>
cudaError_t LaunchForRows(const __nv_bfloat16* a, int64_t half_stride, int num_rows, int k, const int32_t* offsets,
                          int num_experts, const __nv_bfloat16* weights, int n, MmaEpilogue epilogue, OutT* out,
                          cudaStream_t stream) {
  const int mean_rows = num_rows / std::max(num_experts, 1);
  if (mean_rows <= 16) {
    return Launch<Decode16, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out,
                                     stream);
  }
  if (mean_rows <= 32) {
    return Launch<Decode32, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out,
                                     stream);
  }
  // Tall tiles reuse each weight tile across more rows once segments are long.
  if (mean_rows <= 64) {
    return Launch<Mid64, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
  }
  return Launch<Prompt, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
}

template <typename OutT>
cudaError_t Dispatch(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                     const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                     MmaEpilogue epilogue, OutT* out, cudaStream_t stream) {
  if (!ExpertMmaSupports(k, n) || (num_halves != 1 && num_halves != 2)) return cudaErrorInvalidValue;
  if (num_rows == 0) return cudaSuccess;
  return num_halves == 1
             ? LaunchForRows<1>(a, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out, stream)
             : LaunchForRows<2>(a, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out,
                                stream);
}

// Candidate shapes, timed side by side by bench/expert_gemm_bench (one half, fp32 out).
struct Variant {
  const char* name;
  cudaError_t (*launch)(const __nv_bfloat16*, int64_t, int, int, const int32_t*, int, const __nv_bfloat16*, int,
                        MmaEpilogue, float*, cudaStream_t);
};
template <int M, int N, int K, int S>
constexpr Variant MakeVariant(const char* name) {
  return {name, &Launch<Tile<M, N, K, S>, 1, float>};
}
constexpr Variant kVariants[] = {
    MakeVariant<16, 128, 32, 3>("m16 n128 k32 x3"),  MakeVariant<32, 128, 32, 3>("m32 n128 k32 x3"),
    MakeVariant<32, 64, 64, 4>("m32 n64 k64 x4"),    MakeVariant<32, 64, 64, 6>("m32 n64 k64 x6"),
    MakeVariant<32, 128, 64, 4>("m32 n128 k64 x4"),  MakeVariant<64, 64, 64, 4>("m64 n64 k64 x4"),
    MakeVariant<64, 128, 32, 3>("m64 n128 k32 x3"),  MakeVariant<64, 128, 64, 4>("m64 n128 k64 x4"),
};

}  // namespace

bool ExpertMmaSupports(int k, int n) { return k > 0 && n > 0 && k % kChunk == 0 && n % kChunk == 0; }

cudaError_t ExpertMma(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                      const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                      MmaEpilogue epilogue, float* out, cudaStream_t stream) {
  return Dispatch(a, num_halves, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out,
                  stream);
}

cudaError_t ExpertMma(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                      const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                      MmaEpilogue epilogue, __nv_bfloat16* out, cudaStream_t stream) {
  return Dispatch(a, num_halves, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out,
                  stream);
}

int ExpertMmaNumVariants() { return static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0])); }

const char* ExpertMmaVariantName(int variant) {
  return variant >= 0 && variant < ExpertMmaNumVariants() ? kVariants[variant].name : "";
}

cudaError_t ExpertMmaVariant(int variant, const __nv_bfloat16* a, int num_rows, int k, const int32_t* expert_offsets,
                             int num_experts, const __nv_bfloat16* weights, int n, float* out, cudaStream_t stream) {
  if (variant < 0 || variant >= ExpertMmaNumVariants() || !ExpertMmaSupports(k, n)) return cudaErrorInvalidValue;
  if (num_rows == 0) return cudaSuccess;
  return kVariants[variant].launch(a, 0, num_rows, k, expert_offsets, num_experts, weights, n, MmaEpilogue::kNone, out,
                                   stream);
}

}  // namespace mf::kernels
