// moe_generate: offline batch generation. Reads JSONL requests (tools/generate_jsonl.h has the
// line format), submits them all to one moe::Engine up front so continuous batching always has
// work, and writes one JSONL result per request line in input order. Progress and a throughput
// summary go to stderr. With --expert-parallel, one process per rank under mpirun: rank 0 does
// all of that over an expert-parallel engine, the other ranks serve its steps.
//
// Exit status: 0 done (lines the engine rejected, or bad lines under --on-bad-line=skip, are
// error lines in the output); 1 bad lines under --on-bad-line=fail, an engine that cannot be
// created, an I/O error, or a failed expert-parallel group; 2 bad flags.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "engine/dist/ep_launch.h"
#include "tools/flags.h"
#include "tools/generate_jsonl.h"
#include "tools/generate_options.h"
#include "tools/progress_bar.h"
#include "tools/tool_util.h"

namespace moe::tools {
namespace {

// One non-blank input line: its request, or why it is bad.
struct InputLine {
  int64_t line = 0;
  std::string id_json;
  absl::StatusOr<ParsedLine> parsed;
};

// Reads stdin ("-") or a file, and parses every non-blank line.
absl::StatusOr<std::vector<InputLine>> ReadInput(const std::string& path,
                                                 const LineRequest& defaults) {
  std::ifstream file;
  if (path != "-") {
    file.open(ResolveUserPath(path));
    if (!file) {
      return absl::NotFoundError(
          absl::StrCat("cannot open --input ", path, ": ", std::strerror(errno)));
    }
  }
  std::istream& in = path == "-" ? std::cin : file;
  std::vector<InputLine> lines;
  std::string text;
  for (int64_t line_no = 1; std::getline(in, text); ++line_no) {
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    InputLine line{line_no, "", ParseRequestLine(text, line_no, defaults)};
    line.id_json = line.parsed.ok() ? line.parsed->id_json : FindLineId(text);
    lines.push_back(std::move(line));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("reading --input ", path, " failed"));
  return lines;
}

// The result stream: stdout ("-") or a file, with every write checked.
class Output {
 public:
  static absl::StatusOr<std::unique_ptr<Output>> Open(const std::string& path) {
    if (path == "-") return std::unique_ptr<Output>(new Output(stdout, "stdout"));
    FILE* f = std::fopen(ResolveUserPath(path).c_str(), "w");
    if (f == nullptr) {
      const int err = errno;
      const std::string why =
          absl::StrCat("cannot write --output ", path, ": ", std::strerror(err));
      return err == ENOENT || err == ENOTDIR ? absl::NotFoundError(why)
                                             : absl::PermissionDeniedError(why);
    }
    return std::unique_ptr<Output>(new Output(f, path));
  }
  ~Output() {
    if (file_ != stdout) std::fclose(file_);
  }
  absl::Status WriteLine(const std::string& line) {
    if (std::fputs(line.c_str(), file_) == EOF || std::fputc('\n', file_) == EOF) {
      return absl::DataLossError(absl::StrCat("writing ", name_, " failed"));
    }
    return absl::OkStatus();
  }
  absl::Status Flush() {
    if (std::fflush(file_) != 0) {
      return absl::DataLossError(absl::StrCat("writing ", name_, " failed"));
    }
    return absl::OkStatus();
  }

 private:
  Output(FILE* file, std::string name) : file_(file), name_(std::move(name)) {}
  FILE* file_;
  std::string name_;
};

// Counted by the engine's token callback, read by the progress thread.
struct LiveCounts {
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> generated_tokens{0};
};

// Redraws the progress line on stderr (with \r, ~10 times a second) from its own thread.
class ProgressPrinter {
 public:
  ProgressPrinter(const LiveCounts* live, int64_t total, double start_s)
      : live_(live), total_(total), start_s_(start_s), thread_([this] { Loop(); }) {}
  ~ProgressPrinter() {
    if (thread_.joinable()) Finish();
  }
  // Stops the thread, draws the final state (every request done) and ends the line.
  void Finish() {
    stop_.Notify();
    thread_.join();
    Draw(total_);
    std::fputc('\n', stderr);
  }

 private:
  void Loop() {
    do {
      Draw(live_->done.load());
    } while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  }
  void Draw(int64_t done) {
    const std::string line =
        RenderProgressLine({done, total_, live_->generated_tokens.load()}, NowSeconds() - start_s_);
    // Pad with spaces over what a longer previous line left on the terminal.
    const int pad = last_width_ > line.size() ? static_cast<int>(last_width_ - line.size()) : 0;
    last_width_ = line.size();
    std::fprintf(stderr, "\r%s%*s", line.c_str(), pad, "");
    std::fflush(stderr);
  }

  const LiveCounts* live_;
  const int64_t total_;
  const double start_s_;
  size_t last_width_ = 0;
  absl::Notification stop_;
  std::thread thread_;  // last: starts once the members above are set
};

void Report(absl::string_view message) {
  std::fprintf(stderr, "moe_generate: %s\n", std::string(message).c_str());
}

// `status` with "line N: " in front of its message, reported on stderr.
absl::Status LineError(int64_t line_no, const absl::Status& status) {
  absl::Status out(status.code(), absl::StrCat("line ", line_no, ": ", status.message()));
  Report(out.message());
  return out;
}

// Submits every good line up front as one batch, so continuous batching always has work. One
// entry per line: the request id, or the line's error (bad line, or rejected by the engine).
std::vector<absl::StatusOr<RequestId>> SubmitAll(Engine* engine,
                                                 const std::vector<InputLine>& lines,
                                                 LiveCounts* live) {
  const TokenCallback on_token = [live](const TokenEvent& e) {
    // The last event of a request ended between tokens (by Cancel) carries no token (-1).
    if (e.token >= 0) live->generated_tokens.fetch_add(1);
    if (e.finished) live->done.fetch_add(1);
  };
  // One batch (Engine::SubmitBatch): the engine sees every request at once, so the steps, and
  // on a GPU without --batch-invariant the bits, do not depend on how fast lines arrive.
  std::vector<GenerationRequest> requests;
  for (const InputLine& line : lines) {
    if (line.parsed.ok()) requests.push_back(ToRequest(line.parsed->request));
  }
  std::vector<absl::StatusOr<RequestId>> submitted =
      engine->SubmitBatch(std::move(requests), on_token);
  std::vector<absl::StatusOr<RequestId>> ids;
  ids.reserve(lines.size());
  size_t next = 0;
  for (const InputLine& line : lines) {
    if (!line.parsed.ok()) {
      ids.push_back(line.parsed.status());
      continue;
    }
    absl::StatusOr<RequestId> id = std::move(submitted[next++]);
    if (!id.ok()) {
      id = LineError(line.line, id.status());
      live->done.fetch_add(1);
    }
    ids.push_back(std::move(id));
  }
  return ids;
}

// Awaits the requests in input order and writes one line for each; stops at a write error.
absl::Status WriteResults(Engine* engine, const std::vector<InputLine>& lines,
                          const std::vector<absl::StatusOr<RequestId>>& ids, Output* out,
                          ThroughputTotals* totals) {
  for (size_t i = 0; i < lines.size(); ++i) {
    const InputLine& line = lines[i];
    absl::StatusOr<GenerationResult> result =
        ids[i].ok() ? engine->Await(*ids[i]) : absl::StatusOr<GenerationResult>(ids[i].status());
    if (ids[i].ok() && !result.ok()) result = LineError(line.line, result.status());
    ++totals->requests;
    std::string text;
    if (result.ok()) {
      totals->prompt_tokens += result->prompt_tokens;
      totals->generated_tokens += static_cast<int64_t>(result->tokens.size());
      const LineResult formatted{result->tokens, result->logprobs,
                                 FinishReasonName(result->finish_reason), result->prompt_tokens};
      text = FormatResultLine(line.line, line.id_json, formatted, line.parsed->request.logprobs);
    } else {
      ++totals->failed;
      text = FormatErrorLine(line.line, line.id_json, result.status().message());
    }
    absl::Status status = out->WriteLine(text);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// Rank 0 (or the only process): reads the requests, runs them, writes the results. `comm`: the
// expert-parallel group, null on one device.
absl::Status Run(const GenerateOptions& opt, Communicator* comm) {
  absl::StatusOr<std::vector<InputLine>> lines = ReadInput(opt.input, LineDefaults(opt));
  if (!lines.ok()) return lines.status();
  int64_t bad = 0;
  for (const InputLine& line : *lines) {
    if (line.parsed.ok()) continue;
    ++bad;
    Report(line.parsed.status().message());
  }
  if (bad > 0 && opt.on_bad_line == "fail") {
    return absl::InvalidArgumentError(absl::StrCat(bad, " bad line(s) of ", lines->size(),
                                                   "; nothing generated (--on-bad-line=fail)"));
  }
  absl::StatusOr<std::unique_ptr<Output>> out = Output::Open(opt.output);
  if (!out.ok()) return out.status();

  // Declared before the engine, which may still run callbacks while it shuts down.
  LiveCounts live;
  const double t_load = NowSeconds();
  EngineOptions engine_options = ToEngineOptions(opt);
  engine_options.expert_parallel.comm = comm;
  if (opt.progress) {
    engine_options.on_load_progress = [t_load](int64_t done, int64_t total) {
      std::fprintf(stderr, "\r%s%s", RenderLoadLine(done, total, NowSeconds() - t_load).c_str(),
                   done == total ? "\n" : "");
    };
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(ResolveUserPath(opt.model), engine_options);
  if (!engine.ok()) return engine.status();
  const ModelInfo& info = (*engine)->model_info();
  const std::string ranks =
      comm == nullptr ? "" : absl::StrCat(", experts over ", info.expert_parallel_size, " ranks");
  Report(absl::StrFormat("loaded %s from %s (%s, %d KV blocks of %d tokens%s) in %.2f s",
                         info.family, info.model_dir, info.dtype, info.kv_cache_blocks,
                         info.block_size, ranks, NowSeconds() - t_load));

  const double t_start = NowSeconds();
  const std::vector<absl::StatusOr<RequestId>> ids = SubmitAll(engine->get(), *lines, &live);
  std::unique_ptr<ProgressPrinter> progress;
  if (opt.progress) {
    const int64_t total = static_cast<int64_t>(lines->size()) - bad;
    progress = std::make_unique<ProgressPrinter>(&live, total, t_start);
  }
  ThroughputTotals totals;
  absl::Status io = WriteResults(engine->get(), *lines, ids, out->get(), &totals);
  totals.wall_s = NowSeconds() - t_start;
  if (progress != nullptr) progress->Finish();
  if (io.ok()) io = (*out)->Flush();
  if (!io.ok()) return io;
  // Expert parallel: ends the other ranks' serving; a failed group fails the run.
  (*engine)->Shutdown();
  absl::Status group = (*engine)->ExpertParallelStatus();
  if (!group.ok()) return group;
  std::fputs(RenderSummary(totals).c_str(), stderr);
  return absl::OkStatus();
}

// Ranks other than 0: the same engine, serving rank 0's steps until rank 0 is done.
absl::Status Serve(const GenerateOptions& opt, Communicator* comm) {
  EngineOptions engine_options = ToEngineOptions(opt);
  engine_options.expert_parallel.comm = comm;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(ResolveUserPath(opt.model), engine_options);
  if (!engine.ok()) return engine.status();
  return (*engine)->ServeExpertParallel();
}

// --expert-parallel: the mpirun job's group (MPI, and NCCL on GPUs), then Run on rank 0 and
// Serve elsewhere. Returns the exit status; an error on any rank ends every rank (MPI_Abort),
// since a peer may be waiting for it in a collective.
int RunExpertParallel(int* argc, char*** argv, const GenerateOptions& opt) {
  if (!ExpertParallelLaunch::UnderMpirun()) {
    Report(
        "--expert-parallel needs mpirun (one process per rank): mpirun -np N moe_generate "
        "--expert-parallel ...; OMPI_COMM_WORLD_SIZE is not set");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ExpertParallelLaunch>> launch = ExpertParallelLaunch::Start(
      argc, argv, opt.backend, absl::Seconds(opt.expert_parallel_timeout_s));
  if (!launch.ok()) {
    Report(launch.status().ToString());
    return 1;
  }
  const int rank = (*launch)->rank();
  Communicator* comm = (*launch)->group();
  const absl::Status status = rank == 0 ? Run(opt, comm) : Serve(opt, comm);
  if (!status.ok()) {
    // Messages from the library name the rank; a rank-0-only error (input, output) may not.
    Report(absl::StrCat("rank ", rank, ": ", status.ToString()));
    (*launch)->Abort(1);
  }
  return 0;
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::GenerateOptions opt = moe::tools::DefaultGenerateOptions();
  moe::tools::FlagParser flags(moe::tools::GenerateUsage());
  moe::tools::AddGenerateFlags(&flags, &opt);
  absl::Status status = flags.Parse(argc, argv);
  if (status.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (status.ok()) status = moe::tools::CheckGenerateOptions(opt);
  if (!status.ok()) {
    moe::tools::Report(status.message());
    return 2;
  }
  if (opt.expert_parallel) return moe::tools::RunExpertParallel(&argc, &argv, opt);
  status = moe::tools::Run(opt, nullptr);
  if (!status.ok()) {
    moe::tools::Report(status.ToString());
    return 1;
  }
  return 0;
}
