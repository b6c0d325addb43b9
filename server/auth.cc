#include "server/auth.h"

namespace moe::server {
namespace {

// Compares in time that depends only on the lengths, so a client cannot find the token a
// byte at a time by timing.
bool SameBytes(grpc::string_ref a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < b.size(); ++i) diff |= static_cast<unsigned char>(a.data()[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

grpc::Status CheckBearerToken(const grpc::ServerContext& context, const std::string& token) {
  if (token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing \"authorization: Bearer <token>\" metadata");
  }
  if (!SameBytes(it->second, "Bearer " + token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not accepted");
  }
  return grpc::Status::OK;
}

}  // namespace moe::server
