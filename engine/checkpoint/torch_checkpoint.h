// A PyTorch checkpoint file (`torch.save` of a state dict, the zip format of PyTorch 1.6
// and later) read into tensors without PyTorch: the archive's `data.pkl` through the
// allowlisted unpickler, tensor bytes from its storage entries. Tensors keep their names,
// dtypes, shapes and values exactly (strided views are gathered into row-major order).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint/safetensors.h"

namespace mf {

absl::StatusOr<std::vector<TensorToWrite>> ReadTorchCheckpoint(const std::string& path);

}  // namespace mf
