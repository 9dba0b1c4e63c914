#include "client/cli_output.h"

#include <cstdio>

#include <google/protobuf/util/json_util.h>

#include "absl/status/status.h"

namespace squat::cli {

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    return "{}";  // fails only on invalid UTF-8, which the server never sends
  }
  return json;
}

void PrintRpcError(const grpc::Status& status) {
  // gRPC and absl share the canonical code numbering.
  const std::string code =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  std::fprintf(stderr, "error: %s: %s\n", code.c_str(), status.error_message().c_str());
}

}  // namespace squat::cli
