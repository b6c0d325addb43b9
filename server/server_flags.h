// moe_server's command line: the flags (defaults from EngineOptions, ServerOptions and
// ServiceOptions), their checks (InvalidArgument naming the flag and both numbers) and the
// conversion into the engine's and the server's option structs.
#ifndef MOE_SERVER_SERVER_FLAGS_H_
#define MOE_SERVER_SERVER_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/api/engine.h"
#include "server/server.h"
#include "tools/flags.h"

namespace moe::server {

struct ServerFlags {
  std::string model;
  std::string host;
  int64_t port = 0;
  std::string backend;
  std::string dtype;
  bool batch_invariant = false;
  int64_t max_batch_tokens = 0;
  int64_t max_seqs = 0;
  int64_t kv_cache_mb = 0;
  int64_t block_size = 0;
  int64_t max_context = 0;
  int64_t threads = 0;
  int64_t max_queue = 0;
  int64_t max_batch_requests = 0;
  int64_t max_message_bytes = 0;
  int64_t grace_period_ms = 0;
  bool reflection = true;
  int64_t metrics_port = 0;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string bearer_token_file;
  int64_t test_step_delay_ms = 0;
  // One process per rank under mpirun; rank 0 serves gRPC, the others run its steps.
  bool expert_parallel = false;
  std::string equal_split = "auto";
  int64_t expert_parallel_timeout_s = 60;
};

ServerFlags DefaultServerFlags();
const char* ServerUsage();
void AddServerFlags(tools::FlagParser* parser, ServerFlags* flags);

// InvalidArgument naming the flag: --model missing, a port outside [0, 65535], a size below
// its minimum. The engine checks what depends on the model.
absl::Status CheckServerFlags(const ServerFlags& flags);

EngineOptions ToEngineOptions(const ServerFlags& flags);
// Reads the bearer token file (NotFound naming it; InvalidArgument if it is empty).
absl::StatusOr<ServerOptions> ToServerOptions(const ServerFlags& flags);

}  // namespace moe::server

#endif  // MOE_SERVER_SERVER_FLAGS_H_
