#include "server/server_flags.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace moe::server {

ServerFlags DefaultServerFlags() {
  const EngineOptions engine;
  const ServerOptions server;
  ServerFlags f;
  f.host = server.host;
  f.port = server.port;
  f.backend = engine.backend;
  f.dtype = engine.dtype;
  f.batch_invariant = engine.batch_invariant;
  f.max_batch_tokens = engine.max_batch_tokens;
  f.max_seqs = engine.max_seqs;
  f.kv_cache_mb = engine.kv_cache_bytes >> 20;
  f.block_size = engine.block_size;
  f.max_context = engine.max_tokens_per_seq;
  f.threads = engine.threads;
  f.max_queue = server.service.max_queue;
  f.max_batch_requests = server.service.max_batch_requests;
  f.max_message_bytes = server.max_message_bytes;
  f.grace_period_ms = 10000;
  f.reflection = server.reflection;
  f.metrics_port = server.metrics_port;
  return f;
}

const char* ServerUsage() {
  return "moe_server: serves one MoE model over gRPC (moe.v1.MoeService in proto/moe.proto:\n"
         "Generate, GenerateBatch, Forward, GetModelInfo), with grpc.health.v1 (SERVING once the\n"
         "weights are loaded) and server reflection.\n"
         "\n"
         "  moe_server --model models/qwen3-moe-tiny --port 50051\n"
         "\n"
         "Listens on 127.0.0.1 unless --host says otherwise. SIGTERM or SIGINT drains: health\n"
         "NOT_SERVING, new calls UNAVAILABLE, running calls get --grace_period_ms, exit 0.\n"
         "A full admission queue answers RESOURCE_EXHAUSTED at once: retry with backoff.\n"
         "Exit codes: 0 after a drain, 1 when startup fails (one line naming the path, field,\n"
         "device or port), 2 for a bad flag.\n"
         "\n"
         "Expert parallel: one process per rank, every rank its share of the routed experts;\n"
         "rank 0 listens, the others run its steps (NCCL on GPU OMPI_COMM_WORLD_LOCAL_RANK with\n"
         "--backend cuda); SIGTERM to mpirun drains rank 0 and stops the others:\n"
         "  mpirun -np 2 moe_server --expert_parallel --model models/qwen3-moe-tiny --port 50051\n";
}

void AddServerFlags(tools::FlagParser* p, ServerFlags* f) {
  p->AddString("model", &f->model, "model folder (config.json + safetensors); required");
  p->AddString("host", &f->host, "address to listen on");
  p->AddInt("port", &f->port, "gRPC port; 0 = any free port (printed at startup)");
  p->AddString("backend", &f->backend, "cpu | cuda | xpu");
  p->AddString("dtype", &f->dtype, "run dtype: auto | f32 | bf16");
  p->AddBool("expert_parallel", &f->expert_parallel,
             "one process per rank under mpirun; rank 0 serves (see above)");
  p->AddString("equal_split", &f->equal_split,
               "expert parallel token exchange: auto | always | never (same results)");
  p->AddInt("expert_parallel_timeout_s", &f->expert_parallel_timeout_s,
            "a collective waiting longer for a peer fails the job");
  p->AddBool("batch_invariant", &f->batch_invariant,
             "results independent of the batching, bit for bit (slower prefill on a GPU)");
  p->AddInt("max_batch_tokens", &f->max_batch_tokens, "tokens per engine step");
  p->AddInt("max_seqs", &f->max_seqs, "sequences running at once");
  p->AddInt("kv_cache_mb", &f->kv_cache_mb, "KV cache budget in MiB");
  p->AddInt("block_size", &f->block_size, "tokens per KV cache block");
  p->AddInt("max_context", &f->max_context,
            "longest prompt + max_new_tokens of a request; 0 = the model's max positions");
  p->AddInt("threads", &f->threads, "CPU threads; 0 = all cores");
  p->AddInt("max_queue", &f->max_queue,
            "requests admitted beyond --max_seqs (waiting); more get RESOURCE_EXHAUSTED");
  p->AddInt("max_batch_requests", &f->max_batch_requests, "entries of one GenerateBatch call");
  p->AddInt("max_message_bytes", &f->max_message_bytes, "largest request message accepted");
  p->AddInt("grace_period_ms", &f->grace_period_ms, "on SIGTERM, how long running calls may go on");
  p->AddBool("reflection", &f->reflection, "serve gRPC server reflection (grpcurl)");
  p->AddInt("metrics_port", &f->metrics_port,
            "Prometheus metrics over HTTP at /metrics on --host; -1 = off, 0 = any free port");
  p->AddString("tls_cert", &f->tls_cert, "PEM certificate chain: TLS on (with --tls_key)");
  p->AddString("tls_key", &f->tls_key, "PEM private key of --tls_cert");
  p->AddString("tls_client_ca", &f->tls_client_ca,
               "PEM CA bundle: mutual TLS, clients must present a certificate it signed");
  p->AddString("bearer_token_file", &f->bearer_token_file,
               "file holding a token every call but health must send as "
               "\"authorization: Bearer <token>\"");
  p->AddInt("test_step_delay_ms", &f->test_step_delay_ms,
            "testing only: sleep this long in every engine step (the binary's drain tests)");
}

absl::Status CheckServerFlags(const ServerFlags& f) {
  if (f.model.empty()) return absl::InvalidArgumentError("--model is required");
  if (EngineExpertParallel::EqualSplit mode; !ParseEqualSplit(f.equal_split, &mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--equal_split=", f.equal_split, " is not auto, always or never"));
  }
  if (f.port < 0 || f.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port=", f.port, " is outside [0, 65535]"));
  }
  if (f.metrics_port < -1 || f.metrics_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_port=", f.metrics_port, " is outside [-1, 65535]"));
  }
  const auto at_least = [](const char* name, int64_t v, int64_t min) {
    return v >= min
               ? absl::OkStatus()
               : absl::InvalidArgumentError(absl::StrCat("--", name, "=", v, " must be >= ", min));
  };
  for (const auto& [name, v, min] :
       {std::make_tuple("max_batch_tokens", f.max_batch_tokens, 1),
        std::make_tuple("max_seqs", f.max_seqs, 1),
        std::make_tuple("kv_cache_mb", f.kv_cache_mb, 1),
        std::make_tuple("block_size", f.block_size, 1),
        std::make_tuple("max_context", f.max_context, 0), std::make_tuple("threads", f.threads, 0),
        std::make_tuple("max_queue", f.max_queue, 0),
        std::make_tuple("max_batch_requests", f.max_batch_requests, 1),
        std::make_tuple("max_message_bytes", f.max_message_bytes, 1),
        std::make_tuple("grace_period_ms", f.grace_period_ms, 0),
        std::make_tuple("test_step_delay_ms", f.test_step_delay_ms, 0),
        std::make_tuple("expert_parallel_timeout_s", f.expert_parallel_timeout_s, 1)}) {
    if (auto s = at_least(name, v, min); !s.ok()) return s;
  }
  // gRPC takes the message limit as an int.
  if (f.max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_bytes=", f.max_message_bytes, " is over ", INT32_MAX));
  }
  return absl::OkStatus();
}

EngineOptions ToEngineOptions(const ServerFlags& f) {
  EngineOptions o;
  o.backend = f.backend;
  o.dtype = f.dtype;
  o.batch_invariant = f.batch_invariant;
  // Checked by CheckServerFlags; an unchecked bad value keeps the default.
  ParseEqualSplit(f.equal_split, &o.expert_parallel.equal_split);
  o.max_batch_tokens = f.max_batch_tokens;
  o.max_seqs = f.max_seqs;
  o.kv_cache_bytes = f.kv_cache_mb << 20;
  o.block_size = f.block_size;
  o.max_tokens_per_seq = f.max_context;
  o.threads = static_cast<int>(f.threads);
  // Only the metrics endpoint shows them (moe_expert_tokens_total).
  o.count_expert_tokens = f.metrics_port != -1;
  if (f.test_step_delay_ms > 0) {
    const auto delay = std::chrono::milliseconds(f.test_step_delay_ms);
    o.step_hook = [delay] {
      std::this_thread::sleep_for(delay);
      return absl::OkStatus();
    };
  }
  return o;
}

absl::StatusOr<ServerOptions> ToServerOptions(const ServerFlags& f) {
  ServerOptions o;
  o.host = f.host;
  o.port = f.port;
  o.reflection = f.reflection;
  o.max_message_bytes = f.max_message_bytes;
  o.metrics_port = f.metrics_port;
  o.tls_cert = f.tls_cert;
  o.tls_key = f.tls_key;
  o.tls_client_ca = f.tls_client_ca;
  o.service.max_seqs = f.max_seqs;
  o.service.max_queue = f.max_queue;
  o.service.max_batch_requests = f.max_batch_requests;
  o.service.max_message_bytes = f.max_message_bytes;
  if (!f.bearer_token_file.empty()) {
    std::ifstream in(f.bearer_token_file);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("--bearer_token_file=", f.bearer_token_file, " cannot be read"));
    }
    std::ostringstream text;
    text << in.rdbuf();
    o.service.bearer_token = std::string(absl::StripAsciiWhitespace(text.str()));
    if (o.service.bearer_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--bearer_token_file=", f.bearer_token_file, " is empty"));
    }
  }
  return o;
}

}  // namespace moe::server
