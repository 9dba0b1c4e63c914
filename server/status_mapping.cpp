#include "server/status_mapping.h"

#include <string>

namespace squat::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kCancelled: return {grpc::StatusCode::CANCELLED, message};
    case absl::StatusCode::kInvalidArgument: return {grpc::StatusCode::INVALID_ARGUMENT, message};
    case absl::StatusCode::kDeadlineExceeded: return {grpc::StatusCode::DEADLINE_EXCEEDED, message};
    case absl::StatusCode::kNotFound: return {grpc::StatusCode::NOT_FOUND, message};
    case absl::StatusCode::kAlreadyExists: return {grpc::StatusCode::ALREADY_EXISTS, message};
    case absl::StatusCode::kPermissionDenied: return {grpc::StatusCode::PERMISSION_DENIED, message};
    case absl::StatusCode::kResourceExhausted:
      return {grpc::StatusCode::RESOURCE_EXHAUSTED, message};
    case absl::StatusCode::kFailedPrecondition:
      return {grpc::StatusCode::FAILED_PRECONDITION, message};
    case absl::StatusCode::kAborted: return {grpc::StatusCode::ABORTED, message};
    case absl::StatusCode::kOutOfRange: return {grpc::StatusCode::OUT_OF_RANGE, message};
    case absl::StatusCode::kUnimplemented: return {grpc::StatusCode::UNIMPLEMENTED, message};
    case absl::StatusCode::kInternal: return {grpc::StatusCode::INTERNAL, message};
    case absl::StatusCode::kUnavailable: return {grpc::StatusCode::UNAVAILABLE, message};
    case absl::StatusCode::kDataLoss: return {grpc::StatusCode::DATA_LOSS, message};
    case absl::StatusCode::kUnauthenticated: return {grpc::StatusCode::UNAUTHENTICATED, message};
    default: return {grpc::StatusCode::UNKNOWN, message};
  }
}

}  // namespace squat::server
