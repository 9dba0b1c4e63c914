// How squat-cli prints results and errors.
#pragma once

#include <string>

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>

namespace squat::cli {

// One-line proto JSON with the .proto field names and default values included, so that
// scripts see every field.
std::string ToJsonLine(const google::protobuf::Message& message);
// "error: INVALID_ARGUMENT: prompt is empty" on stderr.
void PrintRpcError(const grpc::Status& status);

}  // namespace squat::cli
