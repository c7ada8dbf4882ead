// Messages to and from the wire. The service takes requests as raw bytes and parses them
// itself, so a request gRPC could not parse (malformed, or a string field that is not
// UTF-8) still gets INVALID_ARGUMENT naming the field, and is counted and logged like
// any other call, instead of gRPC's own empty-message failure.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace mf::server {

// Parses `raw` into `message`; on failure, says which field (or that the bytes are not
// a protobuf message at all).
absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message* message);

grpc::ByteBuffer Serialize(const google::protobuf::Message& message);

// Protobuf logs every string field with invalid UTF-8 it refuses to parse; those requests
// are answered (and logged) by the service instead, so a client cannot flood stderr.
// Call once at startup, before serving (protobuf's log handler is not thread-safe).
void QuietProtobufUtf8Errors();

}  // namespace mf::server
