// The state dict in a PyTorch checkpoint's `data.pkl`, read by a pickle interpreter that
// executes nothing: it knows the opcodes a state dict uses and an allowlist of globals
// (OrderedDict, torch's tensor rebuild functions, storage types). Any other global, a call
// of anything else, an unknown opcode or a malformed structure is an error naming what was
// found; no code from a checkpoint ever runs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint/dtype.h"

namespace mf {

// A tensor as the pickle describes it: a strided view into a storage (a zip entry).
struct PickledTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::string storage_key;     // the entry `<archive>/data/<key>`
  int64_t storage_elements = 0;
  int64_t offset = 0;          // in elements
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // in elements
};

// `source` names the file in errors.
absl::StatusOr<std::vector<PickledTensor>> ReadPickledStateDict(std::string_view pickle, const std::string& source);

}  // namespace mf
