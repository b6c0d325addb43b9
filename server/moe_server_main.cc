// moe_server: the gRPC endpoint (server/server.h) over one moe::Engine in this process.
// Never logs prompts or tokens: its only output is startup, readiness and shutdown lines.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/api/engine.h"
#include "server/server.h"
#include "server/server_flags.h"
#include "tools/flags.h"

namespace moe::server {
namespace {

absl::Status Serve(const ServerFlags& flags, const sigset_t& stop_signals) {
  absl::StatusOr<ServerOptions> options = ToServerOptions(flags);
  if (!options.ok()) return options.status();
  // Listening first: a taken port fails before the (long) load, and health answers
  // NOT_SERVING while the weights load.
  absl::StatusOr<std::unique_ptr<MoeServer>> server = MoeServer::Start(*options);
  if (!server.ok()) return server.status();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(flags.model, ToEngineOptions(flags));
  if (!engine.ok()) return engine.status();
  (*server)->SetEngine(engine->get());
  // The one line of a good start (a failed one prints only its error).
  std::fprintf(stderr, "moe_server: serving %s on %s:%d", flags.model.c_str(),
               options->host.c_str(), (*server)->port());
  if ((*server)->metrics_port() > 0) {
    std::fprintf(stderr, ", metrics on http://%s:%d/metrics", options->host.c_str(),
                 (*server)->metrics_port());
  }
  std::fprintf(stderr, "\n");

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "moe_server: %s: draining (grace period %lld ms)\n",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
               static_cast<long long>(flags.grace_period_ms));
  (*server)->Drain(std::chrono::milliseconds(flags.grace_period_ms));
  (*engine)->Shutdown();
  std::fprintf(stderr, "moe_server: stopped\n");
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::server

int main(int argc, char** argv) {
  // Blocked before any thread starts (every thread inherits the mask), so SIGTERM / SIGINT
  // wait for sigwait in Serve instead of killing the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  moe::server::ServerFlags flags = moe::server::DefaultServerFlags();
  moe::tools::FlagParser parser(moe::server::ServerUsage());
  moe::server::AddServerFlags(&parser, &flags);
  absl::Status parsed = parser.Parse(argc, argv);
  if (parsed.ok() && parser.help_requested()) {
    std::fputs(parser.Usage().c_str(), stdout);
    return 0;
  }
  // A flag that parses but is out of range is a bad flag too (exit 2), like an unknown one.
  if (parsed.ok()) parsed = moe::server::CheckServerFlags(flags);
  if (!parsed.ok()) {
    std::fprintf(stderr, "moe_server: %s\n", std::string(parsed.message()).c_str());
    return 2;
  }
  const absl::Status served = moe::server::Serve(flags, stop_signals);
  if (!served.ok()) {
    std::fprintf(stderr, "moe_server: %s\n", served.ToString().c_str());
    return 1;
  }
  return 0;
}
