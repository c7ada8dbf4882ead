#include "engine/checkpoint/torch_checkpoint.h"

#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/checkpoint/torch_pickle.h"
#include "engine/checkpoint/zip_archive.h"

namespace mf {
namespace {

// Copies the strided view `tensor` of `storage` into row-major `out`, checking that every
// element it reaches lies inside the storage.
absl::Status Gather(const PickledTensor& tensor, std::string_view storage, const std::string& source,
                    std::vector<uint8_t>* out) {
  const size_t element = DTypeSize(tensor.dtype);
  const int64_t stored_elements = static_cast<int64_t>(storage.size() / element);
  int64_t count = 1, last = tensor.offset;  // the largest element index the view touches
  for (size_t d = 0; d < tensor.shape.size(); ++d) {
    if (tensor.shape[d] == 0) count = 0;
    if (tensor.shape[d] > (int64_t{1} << 40) || tensor.stride[d] > (int64_t{1} << 40)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", tensor.name, "' has an absurd shape"));
    }
    count *= tensor.shape[d];
    if (tensor.shape[d] > 0) last += (tensor.shape[d] - 1) * tensor.stride[d];
  }
  if (count > 0 && (last >= tensor.storage_elements || last >= stored_elements)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", tensor.name, "' reaches element ", last,
                                                   " of a storage of ", std::min(tensor.storage_elements, stored_elements)));
  }
  out->resize(static_cast<size_t>(count) * element);
  if (count == 0) return absl::OkStatus();
  // Walk the view in row-major order; rows along the last dimension are copied at once
  // when contiguous.
  const size_t rank = tensor.shape.size();
  const int64_t row = rank == 0 ? 1 : tensor.shape[rank - 1];
  const bool contiguous_rows = rank == 0 || tensor.stride[rank - 1] == 1 || row == 1;
  std::vector<int64_t> index(rank, 0);
  uint8_t* target = out->data();
  for (int64_t done = 0; done < count; done += row) {
    int64_t source_element = tensor.offset;
    for (size_t d = 0; d + 1 < rank; ++d) source_element += index[d] * tensor.stride[d];
    if (contiguous_rows) {
      std::memcpy(target, storage.data() + source_element * static_cast<int64_t>(element),
                  static_cast<size_t>(row) * element);
    } else {
      for (int64_t i = 0; i < row; ++i) {
        std::memcpy(target + static_cast<size_t>(i) * element,
                    storage.data() + (source_element + i * tensor.stride[rank - 1]) * static_cast<int64_t>(element),
                    element);
      }
    }
    target += static_cast<size_t>(row) * element;
    for (size_t d = rank < 2 ? 0 : rank - 1; d-- > 0;) {  // next row: advance the leading indices
      if (++index[d] < tensor.shape[d]) break;
      index[d] = 0;
    }
  }
  return absl::OkStatus();
}

bool IsLegacyPickle(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  char magic[2] = {};
  file.read(magic, 2);
  return static_cast<uint8_t>(magic[0]) == 0x80;  // a pickle's PROTO opcode, where a zip has "PK"
}

}  // namespace

absl::StatusOr<std::vector<TensorToWrite>> ReadTorchCheckpoint(const std::string& path) {
  if (IsLegacyPickle(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": a legacy (pre-1.6) PyTorch pickle, which can only be read by running it; re-save it with "
              "torch.save(torch.load(path), path) from a PyTorch of 1.6 or later, then convert"));
  }
  absl::StatusOr<std::unique_ptr<ZipArchive>> archive = ZipArchive::Open(path);
  if (!archive.ok()) return archive.status();
  // The archive's entries share a top-level folder: <name>/data.pkl, <name>/data/<key>.
  std::string prefix;
  for (const auto& [name, data] : (*archive)->entries()) {
    if (absl::EndsWith(name, "/data.pkl") && name.find('/') == name.size() - 9) prefix = name.substr(0, name.size() - 8);
  }
  if (prefix.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no <name>/data.pkl entry"));
  const auto& entries = (*archive)->entries();
  absl::StatusOr<std::vector<PickledTensor>> pickled =
      ReadPickledStateDict(entries.at(prefix + "data.pkl"), absl::StrCat(path, ": data.pkl"));
  if (!pickled.ok()) return pickled.status();
  std::vector<TensorToWrite> tensors;
  for (const PickledTensor& tensor : *pickled) {
    auto storage = entries.find(absl::StrCat(prefix, "data/", tensor.storage_key));
    if (storage == entries.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", tensor.name, "' names storage '", tensor.storage_key, "', which is missing"));
    }
    TensorToWrite out{tensor.name, tensor.dtype, tensor.shape, {}};
    if (absl::Status gathered = Gather(tensor, storage->second, path, &out.bytes); !gathered.ok()) return gathered;
    tensors.push_back(std::move(out));
  }
  return tensors;
}

}  // namespace mf
