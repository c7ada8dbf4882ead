#include <mma.h>

#include <algorithm>

#include "kernels/activations.cuh"
#include "kernels/expert_mma.h"

namespace mf::kernels {
namespace {

using namespace nvcuda;

constexpr int kThreads = 128;  // four warps side by side over the tile's columns
constexpr int kWarps = kThreads / 32;
constexpr int kBlockN = 128;
constexpr int kWarpN = kBlockN / kWarps;  // 32: two 16-wide fragments per warp
constexpr int kBlockK = 32;
// cp.async pipeline depth: two tiles in flight while one computes. (Eight stages for short
// tiles measured slower on H100: the shared memory they take costs resident blocks.)
constexpr int kStages = 3;
// Rows padded by 16 bytes so fragment loads of consecutive rows hit different banks.
constexpr int kLdA = kBlockK + 8;
constexpr int kLdB = kBlockN + 8;
constexpr int kChunk = 8;  // bf16 values per 16-byte copy

template <int kBlockM, int kHalves>
struct StageTiles {
  __nv_bfloat16 a[kHalves][kBlockM][kLdA];
  __nv_bfloat16 b[kBlockK][kLdB];
};

template <int kBlockM, int kHalves>
constexpr size_t SharedBytes() {
  return kStages * sizeof(StageTiles<kBlockM, kHalves>) + kWarps * 16 * 16 * sizeof(float);
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

struct TileRows {
  int expert;  // -1: this block has no tile
  int begin;   // first row of the tile
  int end;     // one past the expert's last row
};

// Tiles are numbered expert by expert, ceil(count / kBlockM) each. Warp 0 scans the
// segment sizes 32 experts at a time to find which expert `tile` falls in.
template <int kBlockM>
__device__ TileRows FindTile(const int32_t* offsets, int num_experts, int tile) {
  __shared__ TileRows found;
  if (threadIdx.x == 0) found.expert = -1;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int tiles_before = 0;
    for (int base = 0; base < num_experts; base += 32) {
      const int expert = base + lane;
      const int count = expert < num_experts ? offsets[expert + 1] - offsets[expert] : 0;
      const int tiles = (count + kBlockM - 1) / kBlockM;
      int inclusive = tiles;
      for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const int first = tiles_before + inclusive - tiles;
      if (tile >= first && tile < first + tiles) {
        found = {expert, offsets[expert] + (tile - first) * kBlockM, offsets[expert + 1]};
      }
      tiles_before += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  return found;
}

template <int kBlockM, int kHalves>
__global__ void __launch_bounds__(kThreads)
    ExpertMmaKernel(const __nv_bfloat16* __restrict__ a, int64_t half_stride, int k,
                    const int32_t* __restrict__ offsets, int num_experts, const __nv_bfloat16* __restrict__ weights,
                    int n, MmaEpilogue epilogue, float* __restrict__ out) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // bf16 tensor cores (sm_80 on)
  extern __shared__ __align__(128) unsigned char shared[];
  auto* stages = reinterpret_cast<StageTiles<kBlockM, kHalves>*>(shared);
  float* scratch = reinterpret_cast<float*>(shared + kStages * sizeof(StageTiles<kBlockM, kHalves>));

  const TileRows tile = FindTile<kBlockM>(offsets, num_experts, blockIdx.y);
  if (tile.expert < 0) return;
  const int rows = min(kBlockM, tile.end - tile.begin);
  const int n0 = blockIdx.x * kBlockN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const __nv_bfloat16* matrix = weights + static_cast<int64_t>(tile.expert) * k * n;

  auto load_stage = [&](int stage, int k_tile) {
    const int k0 = k_tile * kBlockK;
    StageTiles<kBlockM, kHalves>& tiles = stages[stage];
    constexpr int kChunksPerRow = kBlockK / kChunk;
    for (int c = threadIdx.x; c < kHalves * kBlockM * kChunksPerRow; c += kThreads) {
      const int half = c / (kBlockM * kChunksPerRow), row = (c / kChunksPerRow) % kBlockM;
      const int col = (c % kChunksPerRow) * kChunk;
      const bool valid = row < rows && k0 + col < k;
      const __nv_bfloat16* source =
          valid ? a + half * half_stride + static_cast<int64_t>(tile.begin + row) * k + k0 + col : a;
      CopyAsync16(&tiles.a[half][row][col], source, valid);
    }
    constexpr int kChunksPerWeightRow = kBlockN / kChunk;
    for (int c = threadIdx.x; c < kBlockK * kChunksPerWeightRow; c += kThreads) {
      const int row = c / kChunksPerWeightRow, col = (c % kChunksPerWeightRow) * kChunk;
      const bool valid = k0 + row < k && n0 + col < n;
      const __nv_bfloat16* source = valid ? matrix + static_cast<int64_t>(k0 + row) * n + n0 + col : matrix;
      CopyAsync16(&tiles.b[row][col], source, valid);
    }
  };

  constexpr int kFragmentsM = kBlockM / 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> accumulators[kFragmentsM][2];
  for (auto& row : accumulators) {
    for (auto& fragment : row) wmma::fill_fragment(fragment, 0.0f);
  }
  const int k_tiles = (k + kBlockK - 1) / kBlockK;
  for (int stage = 0; stage < kStages - 1; ++stage) {
    if (stage < k_tiles) load_stage(stage, stage);
    CommitCopies();
  }
  for (int k_tile = 0; k_tile < k_tiles; ++k_tile) {
    WaitCopies<kStages - 2>();
    __syncthreads();  // this tile is visible to all, and everyone is done with the stage refilled next
    const int next = k_tile + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next);
    CommitCopies();
    const StageTiles<kBlockM, kHalves>& tiles = stages[k_tile % kStages];
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &tiles.b[kk][warp * kWarpN + j * 16], kLdB);
      // Fully unrolled (fragments stay in registers); rows past the segment are zeros, so
      // their products are skipped.
#pragma unroll
      for (int i = 0; i < kFragmentsM; ++i) {
        if (i * 16 < rows) {
#pragma unroll
          for (int half = 0; half < kHalves; ++half) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fragment_a;
            wmma::load_matrix_sync(fragment_a, &tiles.a[half][i * 16][kk], kLdA);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(accumulators[i][j], fragment_a, b[j], accumulators[i][j]);
          }
        }
      }
    }
  }
  WaitCopies<0>();

  // Each warp moves its 16x16 fragments through shared memory to write bounded rows.
  float* staged = scratch + warp * 16 * 16;
#pragma unroll
  for (int i = 0; i < kFragmentsM; ++i) {
    if (i * 16 >= rows) continue;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(staged, accumulators[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 16 * 16; e += 32) {
        const int row = i * 16 + e / 16, col = n0 + warp * kWarpN + j * 16 + e % 16;
        if (row < rows && col < n) {
          const float value = staged[e];
          out[static_cast<int64_t>(tile.begin + row) * n + col] =
              epilogue == MmaEpilogue::kGeluNew ? GeluNewValue(value) : value;
        }
      }
      __syncwarp();
    }
  }
#endif
}

template <int kBlockM, int kHalves>
cudaError_t Launch(const __nv_bfloat16* a, int64_t half_stride, int num_rows, int k, const int32_t* offsets,
                   int num_experts, const __nv_bfloat16* weights, int n, MmaEpilogue epilogue, float* out,
                   cudaStream_t stream) {
  constexpr size_t kShared = SharedBytes<kBlockM, kHalves>();
  const cudaError_t configured = cudaFuncSetAttribute(
      ExpertMmaKernel<kBlockM, kHalves>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kShared));
  if (configured != cudaSuccess) return configured;
  // Every expert may end in a partial tile: at most rows / kBlockM + experts tiles.
  const int64_t max_tiles = num_rows / kBlockM + num_experts;
  if (max_tiles > 65535) return cudaErrorInvalidValue;
  const dim3 grid((n + kBlockN - 1) / kBlockN, static_cast<unsigned>(max_tiles));
  ExpertMmaKernel<kBlockM, kHalves><<<grid, kThreads, kShared, stream>>>(a, half_stride, k, offsets, num_experts,
                                                                         weights, n, epilogue, out);
  return cudaGetLastError();
}

template <int kHalves>
cudaError_t LaunchForRows(const __nv_bfloat16* a, int64_t half_stride, int num_rows, int k, const int32_t* offsets,
                          int num_experts, const __nv_bfloat16* weights, int n, MmaEpilogue epilogue, float* out,
                          cudaStream_t stream) {
  // Tile height from the mean segment: tall tiles reuse each weight tile across more rows,
  // short ones waste fewer products on padding when segments are small.
  const int mean_rows = num_rows / std::max(num_experts, 1);
  if (mean_rows <= 16) {
    return Launch<16, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
  }
  if (mean_rows <= 32) {
    return Launch<32, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
  }
  if (mean_rows <= 64) {
    return Launch<64, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
  }
  return Launch<128, kHalves>(a, half_stride, num_rows, k, offsets, num_experts, weights, n, epilogue, out, stream);
}

}  // namespace

bool ExpertMmaSupports(int k, int n) { return k > 0 && n > 0 && k % kChunk == 0 && n % kChunk == 0; }

cudaError_t ExpertMma(const __nv_bfloat16* a, int num_halves, int64_t half_stride, int num_rows, int k,
                      const int32_t* expert_offsets, int num_experts, const __nv_bfloat16* weights, int n,
                      MmaEpilogue epilogue, float* out, cudaStream_t stream) {
  if (!ExpertMmaSupports(k, n) || (num_halves != 1 && num_halves != 2)) return cudaErrorInvalidValue;
  if (num_rows == 0) return cudaSuccess;
  return num_halves == 1
             ? LaunchForRows<1>(a, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out, stream)
             : LaunchForRows<2>(a, half_stride, num_rows, k, expert_offsets, num_experts, weights, n, epilogue, out,
                                stream);
}

}  // namespace mf::kernels
