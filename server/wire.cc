#include "server/wire.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/text/utf8.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/unknown_field_set.h"

namespace mf::server {
namespace {

std::string Flatten(const grpc::ByteBuffer& raw) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!raw.Dump(&slices).ok()) return bytes;
  bytes.reserve(raw.Length());
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

// Why `bytes` did not parse as `message`: read as fields without types (which never
// checks UTF-8), then each top-level string field's bytes are checked.
absl::Status Diagnose(const std::string& bytes, const google::protobuf::Message& message) {
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  google::protobuf::UnknownFieldSet fields;
  if (fields.ParseFromString(bytes)) {
    for (int i = 0; i < fields.field_count(); ++i) {
      const google::protobuf::UnknownField& field = fields.field(i);
      if (field.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
      const google::protobuf::FieldDescriptor* known = descriptor->FindFieldByNumber(field.number());
      if (known == nullptr || known->type() != google::protobuf::FieldDescriptor::TYPE_STRING) continue;
      if (SanitizeUtf8(field.length_delimited()) != field.length_delimited()) {
        return absl::InvalidArgumentError(absl::StrCat(known->name(), ": is not valid UTF-8"));
      }
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("request: not a valid ", descriptor->full_name(), " message (", bytes.size(), " bytes)"));
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message* message) {
  const std::string bytes = Flatten(raw);
  if (message->ParseFromString(bytes)) return absl::OkStatus();
  return Diagnose(bytes, *message);
}

void QuietProtobufUtf8Errors() {
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel level, const char* filename, int line,
                                     const std::string& message) {
    if (message.find("invalid UTF-8") != std::string::npos) return;
    std::fprintf(stderr, "[libprotobuf %d %s:%d] %s\n", static_cast<int>(level), filename, line, message.c_str());
  });
}

grpc::ByteBuffer Serialize(const google::protobuf::Message& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace mf::server
