#include "engine/checkpoint/zip_archive.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace mf {
namespace {

constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kDirectoryEntry = 0x02014b50;
constexpr uint32_t kLocalHeader = 0x04034b50;

// Little-endian reads from a bounds-checked cursor.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, size_t at) : data_(data), size_(size), at_(at) {}
  bool Has(size_t bytes) const { return at_ <= size_ && size_ - at_ >= bytes; }
  uint64_t Read(int bytes) {
    uint64_t value = 0;
    for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(data_[at_ + static_cast<size_t>(i)]) << (8 * i);
    at_ += static_cast<size_t>(bytes);
    return value;
  }
  void Skip(size_t bytes) { at_ += bytes; }
  size_t at() const { return at_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_;
};

bool SafeName(const std::string& name) {
  if (name.empty() || name.front() == '/' || name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) {
    return false;
  }
  size_t begin = 0;
  while (begin <= name.size()) {
    const size_t end = std::min(name.find('/', begin), name.size());
    if (name.compare(begin, end - begin, "..") == 0 && end - begin == 2) return false;
    begin = end + 1;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ZipArchive>> ZipArchive::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat info {};
  if (fstat(fd, &info) != 0 || info.st_size < 22) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": too small to be a zip archive"));
  }
  const size_t size = static_cast<size_t>(info.st_size);
  void* mapping = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": cannot map: ", std::strerror(errno)));
  std::unique_ptr<ZipArchive> archive(new ZipArchive(path, static_cast<const uint8_t*>(mapping), size));
  if (absl::Status status = archive->ReadDirectory(); !status.ok()) return status;
  return archive;
}

ZipArchive::~ZipArchive() { munmap(const_cast<uint8_t*>(data_), size_); }

absl::Status ZipArchive::ReadDirectory() {
  auto error = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": not a valid zip archive: ", problem));
  };
  // The end-of-directory record sits in the last 22 + 65,535 bytes (its comment may follow).
  size_t end_record = size_;
  for (size_t at = size_ - 22;; --at) {
    if (Reader(data_, size_, at).Read(4) == kEndOfDirectory) {
      end_record = at;
      break;
    }
    if (at == 0 || size_ - at > 22 + 65535) break;
  }
  if (end_record == size_) return error("no end-of-central-directory record");
  Reader end(data_, size_, end_record + 10);
  uint64_t count = end.Read(2);
  uint64_t directory_size = end.Read(4);
  uint64_t directory_offset = end.Read(4);
  if (end_record >= 20 && Reader(data_, size_, end_record - 20).Read(4) == kZip64Locator) {
    Reader locator(data_, size_, end_record - 20 + 8);
    const uint64_t zip64_end = locator.Read(8);
    Reader zip64(data_, size_, static_cast<size_t>(zip64_end));
    if (zip64_end > size_ || !zip64.Has(56) || zip64.Read(4) != kZip64EndOfDirectory) {
      return error("bad zip64 end-of-directory record");
    }
    zip64.Skip(28);  // record size, versions, disk numbers, entries on this disk
    count = zip64.Read(8);
    directory_size = zip64.Read(8);
    directory_offset = zip64.Read(8);
  }
  if (directory_offset > size_ || directory_size > size_ - directory_offset) return error("directory out of range");
  Reader entry(data_, size_, static_cast<size_t>(directory_offset));
  for (uint64_t index = 0; index < count; ++index) {
    if (!entry.Has(46) || entry.Read(4) != kDirectoryEntry) return error(absl::StrCat("bad directory entry ", index));
    entry.Skip(4);
    const uint64_t flags = entry.Read(2);
    const uint64_t method = entry.Read(2);
    entry.Skip(8);
    uint64_t compressed = entry.Read(4);
    uint64_t uncompressed = entry.Read(4);
    const size_t name_length = entry.Read(2), extra_length = entry.Read(2), comment_length = entry.Read(2);
    entry.Skip(8);
    uint64_t local_offset = entry.Read(4);
    if (!entry.Has(name_length + extra_length + comment_length)) return error("directory truncated");
    const std::string name(reinterpret_cast<const char*>(data_ + entry.at()), name_length);
    entry.Skip(name_length);
    // Zip64 sizes and offset, in the order of the 32-bit fields that overflowed.
    Reader extra(data_, size_, entry.at());
    const size_t extra_end = entry.at() + extra_length;
    while (extra.at() + 4 <= extra_end) {
      const uint64_t id = extra.Read(2), length = extra.Read(2);
      const size_t next = extra.at() + length;
      if (next > extra_end) return error(absl::StrCat("entry '", name, "': bad extra field"));
      if (id == 1) {
        for (uint64_t* field : {&uncompressed, &compressed, &local_offset}) {
          if (*field == 0xFFFFFFFFu && extra.at() + 8 <= next) *field = extra.Read(8);
        }
      }
      extra = Reader(data_, size_, next);
    }
    entry.Skip(extra_length + comment_length);
    if (!SafeName(name)) return error(absl::StrCat("entry name '", name, "' leaves the archive"));
    if (flags & 1) return error(absl::StrCat("entry '", name, "' is encrypted"));
    if (method != 0 || compressed != uncompressed) {
      return error(absl::StrCat("entry '", name, "' is compressed (method ", method,
                                "); PyTorch checkpoints store entries uncompressed"));
    }
    Reader local(data_, size_, static_cast<size_t>(local_offset));
    if (local_offset > size_ || !local.Has(30) || local.Read(4) != kLocalHeader) {
      return error(absl::StrCat("entry '", name, "': bad local header"));
    }
    local.Skip(22);
    const size_t local_name = local.Read(2), local_extra = local.Read(2);
    const size_t data_offset = local.at() + local_name + local_extra;
    if (data_offset > size_ || uncompressed > size_ - data_offset) {
      return error(absl::StrCat("entry '", name, "': data past the end of the file"));
    }
    if (!entries_.emplace(name, std::string_view(reinterpret_cast<const char*>(data_ + data_offset), uncompressed))
             .second) {
      return error(absl::StrCat("entry '", name, "' appears twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace mf
