// The bearer-token check of moe_server: a call must carry the metadata
//   authorization: Bearer <token>
// when the server was given a token. Health checks are never asked (they do not reach these
// handlers).
#ifndef MOE_SERVER_AUTH_H_
#define MOE_SERVER_AUTH_H_

#include <string>

#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace moe::server {

// OK when `token` is empty or the call carries it; UNAUTHENTICATED otherwise (the message
// says what is missing, never the expected token).
grpc::Status CheckBearerToken(const grpc::ServerContext& context, const std::string& token);

}  // namespace moe::server

#endif  // MOE_SERVER_AUTH_H_
