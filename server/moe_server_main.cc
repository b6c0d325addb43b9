// moe_server: the gRPC endpoint (server/server.h) over one moe::Engine in this process. With
// --expert_parallel, one process per rank under mpirun: rank 0 is that server over an
// expert-parallel engine, the other ranks serve its model steps.
// Never logs prompts or tokens: its only output is startup, readiness and shutdown lines.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/api/engine.h"
#include "engine/dist/ep_launch.h"
#include "server/server.h"
#include "server/server_flags.h"
#include "tools/flags.h"

namespace moe::server {
namespace {

// Rank 0 (or the only process). `comm`: the expert-parallel group, null on one device.
absl::Status Serve(const ServerFlags& flags, const sigset_t& stop_signals, Communicator* comm) {
  absl::StatusOr<ServerOptions> options = ToServerOptions(flags);
  if (!options.ok()) return options.status();
  // Listening first: a taken port fails before the (long) load, and health answers
  // NOT_SERVING while the weights load.
  absl::StatusOr<std::unique_ptr<MoeServer>> server = MoeServer::Start(*options);
  if (!server.ok()) return server.status();
  EngineOptions engine_options = ToEngineOptions(flags);
  engine_options.expert_parallel.comm = comm;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(flags.model, engine_options);
  if (!engine.ok()) return engine.status();
  (*server)->SetEngine(engine->get());
  // The one line of a good start (a failed one prints only its error).
  std::fprintf(stderr, "moe_server: serving %s on %s:%d", flags.model.c_str(),
               options->host.c_str(), (*server)->port());
  if (comm != nullptr) std::fprintf(stderr, ", experts over %d ranks", comm->size());
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
  // Expert parallel: also ends the other ranks' serving.
  (*engine)->Shutdown();
  std::fprintf(stderr, "moe_server: stopped\n");
  return absl::OkStatus();
}

// Ranks other than 0: the same engine, running rank 0's steps until rank 0 stops.
absl::Status ServeSteps(const ServerFlags& flags, Communicator* comm) {
  EngineOptions engine_options = ToEngineOptions(flags);
  engine_options.expert_parallel.comm = comm;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(flags.model, engine_options);
  if (!engine.ok()) return engine.status();
  return (*engine)->ServeExpertParallel();
}

// --expert_parallel: every rank of the mpirun job. An error on any rank ends the job
// (MPI_Abort), since its peers may be waiting for it in a collective.
int ServeExpertParallel(int* argc, char*** argv, const ServerFlags& flags,
                        const sigset_t& stop_signals) {
  absl::StatusOr<std::unique_ptr<ExpertParallelLaunch>> launch = ExpertParallelLaunch::Start(
      argc, argv, flags.backend, absl::Seconds(flags.expert_parallel_timeout_s));
  if (!launch.ok()) {
    std::fprintf(stderr, "moe_server: %s\n", launch.status().ToString().c_str());
    return 1;
  }
  const int rank = (*launch)->rank();
  const absl::Status status = rank == 0 ? Serve(flags, stop_signals, (*launch)->group())
                                        : ServeSteps(flags, (*launch)->group());
  if (!status.ok()) {
    std::fprintf(stderr, "moe_server: rank %d: %s\n", rank, status.ToString().c_str());
    (*launch)->Abort(1);
  }
  return 0;
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
  if (flags.expert_parallel) {
    return moe::server::ServeExpertParallel(&argc, &argv, flags, stop_signals);
  }
  const absl::Status served = moe::server::Serve(flags, stop_signals, nullptr);
  if (!served.ok()) {
    std::fprintf(stderr, "moe_server: %s\n", served.ToString().c_str());
    return 1;
  }
  return 0;
}
