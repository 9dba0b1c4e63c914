// absl::Status (runtime errors) -> grpc::Status (what the client sees).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace squat::server {

// Keeps the message; the code keeps its meaning (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace squat::server
