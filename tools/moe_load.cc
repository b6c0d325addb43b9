// moe_load: drives N concurrent clients for a bounded time against a running moe_server and
// prints throughput and latency percentiles (time to first token, inter-token, end to end).
// Each client loops: a Generate stream (greedy unless --temperature, eos ignored, so every call
// makes --max_new_tokens tokens) or, with probability --forward_fraction, a Forward of one
// sequence (logits). Prompts are random token ids, a fresh draw per call from a per-client seed.
// A call started before the end runs to its end; failed calls are counted by gRPC status.
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/moe.grpc.pb.h"
#include "tools/flags.h"
#include "tools/load_stats.h"
#include "tools/tool_util.h"

namespace moe::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "127.0.0.1:50051";
  int64_t clients = 8;
  double duration_s = 10;
  double forward_fraction = 0;
  int64_t prompt_tokens = 32;
  int64_t max_new_tokens = 32;
  double temperature = 0;
  int64_t seed = 1;
  int64_t deadline_ms = 60000;
  std::string token;
  std::string json;
};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c < 17 ? kNames[c] : absl::StrCat("CODE_", c);
}

class Client {
 public:
  Client(const Options& o, v1::MoeService::Stub& stub, int64_t vocab_size, int index)
      : o_(o), stub_(stub), rng_(o.seed * 1000003 + index), tokens_(0, vocab_size - 1) {}

  LoadSamples Run(Clock::time_point end) {
    std::bernoulli_distribution forward(o_.forward_fraction);
    while (Clock::now() < end) {
      if (forward(rng_)) {
        DoForward();
      } else {
        DoGenerate();
      }
    }
    return std::move(samples_);
  }

 private:
  void Prepare(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(o_.deadline_ms));
    if (!o_.token.empty()) context->AddMetadata("authorization", "Bearer " + o_.token);
  }

  void DoGenerate() {
    v1::GenerateRequest request;
    for (int64_t i = 0; i < o_.prompt_tokens; ++i) request.add_prompt(tokens_(rng_));
    request.set_max_new_tokens(o_.max_new_tokens);
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(static_cast<float>(o_.temperature));
    request.mutable_sampling()->set_seed(rng_());
    grpc::ClientContext context;
    Prepare(&context);
    const Clock::time_point start = Clock::now();
    Clock::time_point last = start;
    int64_t tokens = 0;
    std::vector<double> ttft;
    std::vector<double> gaps;
    auto reader = stub_.Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (response.tokens_size() == 0) continue;
      const Clock::time_point now = Clock::now();
      if (tokens == 0) {
        ttft.push_back(Seconds(now - start));
      } else {
        gaps.insert(gaps.end(), response.tokens_size(),
                    Seconds(now - last) / response.tokens_size());
      }
      tokens += response.tokens_size();
      last = now;
    }
    const grpc::Status status = reader->Finish();
    if (!status.ok()) {
      ++samples_.failures[CodeName(status.error_code())];
      return;
    }
    ++samples_.generate_ok;
    samples_.tokens += tokens;
    samples_.ttft.insert(samples_.ttft.end(), ttft.begin(), ttft.end());
    samples_.inter_token.insert(samples_.inter_token.end(), gaps.begin(), gaps.end());
    samples_.generate_e2e.push_back(Seconds(Clock::now() - start));
  }

  void DoForward() {
    v1::ForwardRequest request;
    request.set_output(v1::FORWARD_OUTPUT_LOGITS);
    v1::TokenSequence* sequence = request.add_sequences();
    for (int64_t i = 0; i < o_.prompt_tokens; ++i) sequence->add_tokens(tokens_(rng_));
    grpc::ClientContext context;
    Prepare(&context);
    v1::ForwardResponse response;
    const Clock::time_point start = Clock::now();
    const grpc::Status status = stub_.Forward(&context, request, &response);
    if (!status.ok()) {
      ++samples_.failures[CodeName(status.error_code())];
      return;
    }
    ++samples_.forward_ok;
    samples_.forward_e2e.push_back(Seconds(Clock::now() - start));
  }

  const Options& o_;
  v1::MoeService::Stub& stub_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<int32_t> tokens_;
  LoadSamples samples_;
};

absl::Status CheckOptions(const Options& o) {
  if (o.clients < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--clients=", o.clients, " must be >= 1"));
  }
  if (!(o.duration_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--duration_s=", o.duration_s, " must be > 0"));
  }
  if (!(o.forward_fraction >= 0 && o.forward_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--forward_fraction=", o.forward_fraction, " is outside [0, 1]"));
  }
  if (o.prompt_tokens < 1 || o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--prompt_tokens=", o.prompt_tokens,
                                                   " and --max_new_tokens=", o.max_new_tokens,
                                                   " must be >= 1"));
  }
  if (o.deadline_ms < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--deadline_ms=", o.deadline_ms, " must be >= 1"));
  }
  return absl::OkStatus();
}

absl::Status Run(const Options& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  // One channel per client, each with its own subchannel pool: separate HTTP/2 connections, as
  // separate callers would have.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::vector<std::unique_ptr<v1::MoeService::Stub>> stubs;
  for (int64_t c = 0; c < o.clients; ++c) {
    stubs.push_back(v1::MoeService::NewStub(
        grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args)));
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!o.token.empty()) context.AddMetadata("authorization", "Bearer " + o.token);
  v1::ModelInfo info;
  const grpc::Status status = stubs[0]->GetModelInfo(&context, {}, &info);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("GetModelInfo on --target=", o.target,
                                               " failed: ", CodeName(status.error_code()), ": ",
                                               status.error_message()));
  }
  if (o.prompt_tokens + o.max_new_tokens > info.max_context()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompt_tokens=", o.prompt_tokens, " + --max_new_tokens=", o.max_new_tokens,
                     " exceeds the server's max_context=", info.max_context()));
  }

  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(o.duration_s));
  std::vector<LoadSamples> per_client(o.clients);
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < o.clients; ++c) {
    threads.emplace_back([&, c] {
      per_client[c] = Client(o, *stubs[c], info.vocab_size(), static_cast<int>(c)).Run(end);
    });
  }
  for (std::thread& t : threads) t.join();
  const double wall_s = Seconds(Clock::now() - start);
  LoadSamples all;
  for (const LoadSamples& s : per_client) all.Merge(s);

  LoadSettings settings{o.target,           o.clients,       o.duration_s,
                        o.forward_fraction, o.prompt_tokens, o.max_new_tokens,
                        info.family(),      info.backend(),  info.dtype()};
  std::fputs(FormatLoadText(settings, all, wall_s).c_str(), stdout);
  if (!o.json.empty()) {
    const std::string path = ResolveUserPath(o.json);
    if (absl::Status s = MakeParentDirs(path); !s.ok()) return s;
    if (absl::Status s = WriteTextFile(
            path, FormatLoadJson(settings, all, wall_s, CpuModelName(), LocalTimestamp()));
        !s.ok()) {
      return s;
    }
    std::printf("wrote %s\n", path.c_str());
  }
  if (all.generate_ok + all.forward_ok == 0) {
    return absl::UnavailableError("every call failed (see the counts above)");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::Options o;
  moe::tools::FlagParser flags(
      "moe_load: N concurrent clients against a running moe_server for a bounded time; prints\n"
      "throughput and latency percentiles (TTFT, inter-token, end to end; p50/p90/p99).\n"
      "  moe_server --model models/qwen3-moe-tiny --port 50051 &\n"
      "  moe_load --target 127.0.0.1:50051 --clients 16 --duration_s 20 --json /tmp/load.json\n"
      "Exit 0 when at least one call succeeded (failures are counted by gRPC status), 1 when\n"
      "the server cannot be reached or every call failed, 2 for a bad flag.\n");
  flags.AddString("target", &o.target, "host:port of the moe_server");
  flags.AddInt("clients", &o.clients, "concurrent clients, each on its own connection");
  flags.AddDouble("duration_s", &o.duration_s,
                  "seconds to start new calls (calls running at the end are finished)");
  flags.AddDouble("forward_fraction", &o.forward_fraction,
                  "share of calls that are Forward (one sequence, logits) instead of Generate");
  flags.AddInt("prompt_tokens", &o.prompt_tokens, "prompt length (random token ids)");
  flags.AddInt("max_new_tokens", &o.max_new_tokens, "tokens per Generate (eos ignored)");
  flags.AddDouble("temperature", &o.temperature, "sampling temperature; 0 = greedy");
  flags.AddInt("seed", &o.seed, "seed of the prompts and sampling");
  flags.AddInt("deadline_ms", &o.deadline_ms, "deadline of each call");
  flags.AddString("token", &o.token, "bearer token, if the server asks for one");
  flags.AddString("json", &o.json, "also write the figures as JSON to this file");
  return moe::tools::RunMain("moe_load", flags, argc, argv, [&] { return moe::tools::Run(o); });
}
