#include "server/tls_options.h"

#include <fstream>
#include <sstream>

#include <grpcpp/security/server_credentials.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/token_auth.h"

namespace squat::server {

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& what,
                                        const std::string& label) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read ", what, " file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  const std::string pem = text.str();
  // Keys come as "PRIVATE KEY", "RSA PRIVATE KEY" or "EC PRIVATE KEY".
  const bool has_block = label.empty() ? absl::StrContains(pem, "PRIVATE KEY-----")
                                       : absl::StrContains(pem, absl::StrCat("-----BEGIN ", label, "-----"));
  if (!absl::StrContains(pem, "-----BEGIN ") || !has_block) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " file '", path, "' holds no PEM ", label.empty() ? "PRIVATE KEY" : label, " block"));
  }
  return pem;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> BuildServerCredentials(
    const SecurityOptions& options) {
  if (!options.tls()) return grpc::InsecureServerCredentials();

  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert = ReadPemFile(options.tls_cert_path, "--tls-cert", "CERTIFICATE");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(options.tls_key_path, "--tls-key", "");
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca_path.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPemFile(options.tls_client_ca_path, "--tls-client-ca", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    ssl.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::SslServerCredentials(ssl);
  if (credentials == nullptr) {
    return absl::FailedPreconditionError("gRPC refused the TLS certificate or key");
  }
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadBearerTokenFile(options.auth_token_file);
    if (!token.ok()) return token.status();
    credentials->SetAuthMetadataProcessor(std::make_shared<BearerTokenAuthProcessor>(*token));
  }
  return credentials;
}

}  // namespace squat::server
