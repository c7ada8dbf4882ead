// Token selection on the GPU, so greedy decoding downloads one id per sequence instead
// of a vocabulary-sized row of logits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mf::kernels {

// tokens[r] = the index of the largest of logits[r, 0..width), the lowest among ties (as
// std::max_element picks on the host).
cudaError_t ArgmaxRows(const float* logits, int num_rows, int width, int32_t* tokens, cudaStream_t stream);

}  // namespace mf::kernels
