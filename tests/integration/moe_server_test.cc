// The moe_server binary as a process: --help, startup failures (hard edge 9: non-zero exit,
// quickly, one line naming the path, field, device or port) and SIGTERM (hard edge 8: health
// NOT_SERVING, new calls UNAVAILABLE, running streams finish within the grace period or end
// with a status naming the shutdown, exit 0).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "proto/health.grpc.pb.h"
#include "tests/integration/server_fixture.h"

extern char** environ;

namespace moe::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr char kBinary[] = "server/moe_server";

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// moe_server with `args`, stderr and stdout into a file.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    static int counter = 0;
    log_ = TempDir() + "/moe_server_" + std::to_string(++counter) + ".log";
    std::vector<std::string> argv_strings = {kBinary};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 2, 1);
    EXPECT_EQ(posix_spawn(&pid_, kBinary, &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // The exit code, or -1 if it did not exit within `timeout` (or died of a signal).
  int Wait(milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
    return -1;
  }
  std::string Output() const { return ReadFile(log_); }
  // The port from "moe_server: serving <model> on 127.0.0.1:<port>", 0 if not (yet) there.
  int ServingPort() const {
    const std::string out = Output();
    const size_t at = out.find("on 127.0.0.1:");
    return at == std::string::npos ? 0 : std::atoi(out.c_str() + at + 13);
  }
  void Signal(int sig) { kill(pid_, sig); }

 private:
  pid_t pid_ = 0;
  bool exited_ = false;
  std::string log_;
};

TEST(MoeServerTest, HelpListsTheFlagsAndExitsZero) {
  ServerProcess p({"--help"});
  EXPECT_EQ(p.Wait(milliseconds(10000)), 0);
  const std::string out = p.Output();
  for (const char* flag : {"--model", "--port", "--host", "--max_queue", "--max_message_bytes",
                           "--grace_period_ms", "--reflection", "--metrics_port", "--tls_cert",
                           "--tls_client_ca", "--bearer_token_file"}) {
    EXPECT_TRUE(absl::StrContains(out, flag)) << flag;
  }
}

// Copies the tiny model to a scratch folder for corrupting.
std::string CopyModel(const std::string& name) {
  const std::string dir = TempDir() + "/" + name;
  fs::remove_all(dir);
  fs::copy(kTinyModel, dir);
  return dir;
}

struct StartupCase {
  std::string name;
  std::vector<std::string> args;
  int exit_code;
  std::string names;  // what the one line must name
};

TEST(MoeServerTest, StartupFailuresExitNonZeroQuicklyWithOneLineNamingTheCause) {
  const std::string corrupt = CopyModel("corrupt-shard");
  fs::resize_file(corrupt + "/model.safetensors", 1000);
  const std::string bad_config = CopyModel("bad-config");
  {
    std::string config = ReadFile(bad_config + "/config.json");
    const size_t at = config.find("\"num_experts_per_tok\": 4");
    ASSERT_NE(at, std::string::npos);
    config.replace(at, 24, "\"num_experts_per_tok\": 99");
    std::ofstream(bad_config + "/config.json") << config;
  }
  // A port held by this test.
  const int holder = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(holder, 1), 0);
  ASSERT_EQ(getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = std::to_string(ntohs(addr.sin_port));

  const std::vector<StartupCase> cases = {
      {"missing model dir", {"--model", "/no/such/model", "--port", "0"}, 1,
       "/no/such/model/config.json"},
      {"corrupt shard", {"--model", corrupt, "--port", "0"}, 1, corrupt + "/model.safetensors"},
      {"bad config", {"--model", bad_config, "--port", "0"}, 1, "num_experts_per_tok"},
      {"device not present", {"--model", kTinyModel, "--port", "0", "--backend", "xpu"}, 1,
       "xpu:0"},
      {"port in use", {"--model", kTinyModel, "--port", taken}, 1, "127.0.0.1:" + taken},
      {"bad flag", {"--model", kTinyModel, "--port", "70000"}, 2, "--port=70000"},
      {"bad equal split", {"--model", kTinyModel, "--equal_split", "sometimes"}, 2,
       "--equal_split=sometimes"},
      {"expert parallel without mpirun", {"--model", kTinyModel, "--expert_parallel"}, 1,
       "needs mpirun"},
  };
  for (const StartupCase& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    ServerProcess p(c.args);
    EXPECT_EQ(p.Wait(milliseconds(20000)), c.exit_code) << c.name << ": " << p.Output();
    EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(10000)) << c.name;
    const std::string out = p.Output();
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << c.name << ": " << out;
    EXPECT_TRUE(absl::StrContains(out, c.names)) << c.name << ": " << out;
    EXPECT_TRUE(absl::StartsWith(out, "moe_server: ")) << c.name << ": " << out;
  }
  close(holder);
}

// A started moe_server with slow steps and a client channel to it.
struct Started {
  std::unique_ptr<ServerProcess> process;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::MoeService::Stub> stub;
};

Started StartSlowServer(const std::string& grace_ms) {
  Started s;
  s.process = std::make_unique<ServerProcess>(std::vector<std::string>{
      "--model", kTinyModel, "--port", "0", "--threads", "1", "--test_step_delay_ms", "10",
      "--grace_period_ms", grace_ms});
  EXPECT_TRUE(WaitFor([&] { return s.process->ServingPort() != 0; }, milliseconds(30000)))
      << s.process->Output();
  s.channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(s.process->ServingPort()),
                                  grpc::InsecureChannelCredentials());
  s.stub = v1::MoeService::NewStub(s.channel);
  return s;
}

TEST(MoeServerTest, SigtermDrainsRunningStreamsFinishAndExitIsZero) {
  Started s = StartSlowServer("10000");
  EXPECT_EQ(HealthCheck(s.channel), grpc::health::v1::HealthCheckResponse::SERVING);
  StreamResult running;
  std::atomic<bool> first{false};
  std::thread client([&] {
    grpc::ClientContext context;
    auto reader = s.stub->Generate(&context, GreedyRequest({1, 2, 3}, 60));
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      first.store(true);
      running.tokens.insert(running.tokens.end(), response.tokens().begin(),
                            response.tokens().end());
    }
    running.status = reader->Finish();
  });
  ASSERT_TRUE(WaitFor([&] { return first.load(); }));
  s.process->Signal(SIGTERM);
  EXPECT_TRUE(WaitFor([&] {
    return HealthCheck(s.channel) == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  }));
  StreamResult refused = RunGenerate(*s.stub, GreedyRequest({4}, 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  client.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.tokens.size(), 60u);
  EXPECT_EQ(s.process->Wait(milliseconds(10000)), 0) << s.process->Output();
  EXPECT_TRUE(absl::StrContains(s.process->Output(), "SIGTERM: draining"));
}

TEST(MoeServerTest, SigtermStreamsPastTheGracePeriodEndNamingTheShutdown) {
  Started s = StartSlowServer("100");
  StreamResult running;
  std::atomic<bool> first{false};
  std::thread client([&] {
    grpc::ClientContext context;
    auto reader = s.stub->Generate(&context, GreedyRequest({1, 2, 3}, 250));
    v1::GenerateResponse response;
    while (reader->Read(&response)) first.store(true);
    running.status = reader->Finish();
  });
  ASSERT_TRUE(WaitFor([&] { return first.load(); }));
  s.process->Signal(SIGTERM);
  client.join();
  EXPECT_EQ(running.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(running.status.error_message(), "shutting down"))
      << running.status.error_message();
  EXPECT_EQ(s.process->Wait(milliseconds(10000)), 0) << s.process->Output();
}

}  // namespace
}  // namespace moe::testing
