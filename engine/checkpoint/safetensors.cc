#include "engine/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mf {
namespace {

using nlohmann::json;

constexpr size_t kHeaderLengthBytes = 8;
// The format caps headers at 100 MB; anything larger is corrupt, not a checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

absl::Status TensorError(const std::string& path, const std::string& tensor, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", tensor, "': ", problem));
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const json& entry, const std::string& path,
                                                const std::string& name) {
  auto it = entry.find("shape");
  if (it == entry.end() || !it->is_array()) return TensorError(path, name, "missing 'shape' array");
  std::vector<int64_t> shape;
  for (const json& dim : *it) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      return TensorError(path, name, "shape entries must be non-negative integers");
    }
    shape.push_back(dim.get<int64_t>());
  }
  return shape;
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot stat"));
  }
  const size_t file_size = static_cast<size_t>(info.st_size);
  if (file_size < kHeaderLengthBytes) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated file (", file_size, " bytes, no header length)"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed"));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, mapping, file_size));
  MF_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::Status SafetensorsFile::ParseHeader() {
  const auto* bytes = static_cast<const uint8_t*>(mapping_);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes, kHeaderLengthBytes);  // little-endian host assumed (x86-64, arm64)
  if (header_length > kMaxHeaderBytes || header_length > mapping_size_ - kHeaderLengthBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header length ", header_length,
                                                   " out of range for a file of ", mapping_size_, " bytes"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + kHeaderLengthBytes);
  json header = json::parse(header_begin, header_begin + header_length, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": malformed JSON header"));
  }
  const size_t data_start = kHeaderLengthBytes + header_length;
  const size_t data_size = mapping_size_ - data_start;

  std::vector<std::pair<size_t, size_t>> extents;  // (begin, end) of each tensor, for overlap checks
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object()) {
        for (const auto& [key, value] : entry.items()) {
          if (value.is_string()) metadata_[key] = value.get<std::string>();
        }
      }
      continue;
    }
    if (!entry.is_object()) return TensorError(path_, name, "entry is not an object");
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) return TensorError(path_, name, "missing 'dtype'");
    std::optional<DType> dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype) return TensorError(path_, name, absl::StrCat("unknown dtype '", dtype_it->get<std::string>(), "'"));
    MF_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ParseShape(entry, path_, name));

    auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return TensorError(path_, name, "'data_offsets' must be two non-negative integers");
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return TensorError(path_, name, absl::StrCat("data offsets [", begin, ", ", end,
                                                   ") out of bounds (data section is ", data_size, " bytes)"));
    }
    TensorView view{name, path_, *dtype, std::move(shape), bytes + data_start + begin, end - begin};
    const uint64_t expected_bytes = static_cast<uint64_t>(view.num_elements()) * DTypeSize(*dtype);
    if (expected_bytes != end - begin) {
      return TensorError(path_, name, absl::StrCat("holds ", end - begin, " bytes but its shape and dtype need ",
                                                   expected_bytes));
    }
    extents.emplace_back(begin, end);
    tensors_.emplace(name, std::move(view));
  }

  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i].first < extents[i - 1].second) {
      for (const auto& [name, view] : tensors_) {
        if (static_cast<const uint8_t*>(view.data) == bytes + data_start + extents[i].first) {
          return TensorError(path_, name, "data overlaps another tensor");
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorToWrite& tensor : tensors) {
    header[tensor.name] = {{"dtype", std::string(DTypeName(tensor.dtype))},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + tensor.bytes.size()}}};
    offset += tensor.bytes.size();
  }
  std::string header_text = header.dump();
  while (header_text.size() % 8 != 0) header_text.push_back(' ');  // keeps data 8-byte aligned
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot create"));
  const uint64_t header_length = header_text.size();
  out.write(reinterpret_cast<const char*>(&header_length), sizeof(header_length));
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const TensorToWrite& tensor : tensors) {
    out.write(reinterpret_cast<const char*>(tensor.bytes.data()), static_cast<std::streamsize>(tensor.bytes.size()));
  }
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace mf
