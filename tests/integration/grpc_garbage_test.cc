// Hard edge 12, the port side: random bytes, broken HTTP/2 (a good preface, then garbage frames
// or a HEADERS frame of garbage HPACK), plain HTTP/1.1 and half-open connections on the gRPC
// port do not crash the server, and it then serves a normal request with the same tokens as the
// engine alone. (The request parse + validation fuzzer is tests/fuzz/request_fuzz.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <random>
#include <string>

#include "gtest/gtest.h"
#include "proto/health.grpc.pb.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {
namespace {

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// A TCP connection to 127.0.0.1:port (-1 on failure) whose reads give up after 200 ms.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval timeout{0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `bytes` on a new connection, reads what the server answers until it closes or goes
// quiet, and closes. The server may reset the connection at any point: only its survival counts.
void SendAndClose(int port, const std::string& bytes) {
  const int fd = Connect(port);
  ASSERT_GE(fd, 0) << "connect to port " << port;
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += n;
  }
  char buffer[4096];
  while (read(fd, buffer, sizeof(buffer)) > 0) {
  }
  close(fd);
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload.
std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  const uint32_t n = payload.size();
  std::string f = {static_cast<char>(n >> 16),
                   static_cast<char>(n >> 8),
                   static_cast<char>(n),
                   static_cast<char>(type),
                   static_cast<char>(flags),
                   static_cast<char>(stream >> 24),
                   static_cast<char>(stream >> 16),
                   static_cast<char>(stream >> 8),
                   static_cast<char>(stream)};
  return f + payload;
}

TEST(GrpcGarbageTest, GarbageOnThePortLeavesTheServerServing) {
  server::ServerOptions options;
  options.metrics_port = 0;
  EngineOptions engine_options;
  engine_options.max_seqs = 4;
  engine_options.kv_cache_bytes = 8 << 20;
  engine_options.threads = 1;
  auto t = StartServer(options, engine_options);
  ASSERT_NE(t, nullptr);
  const int port = t->server->port();
  std::mt19937_64 rng(12);

  // Held open, half a preface, for the whole test.
  const int half_open = Connect(port);
  ASSERT_GE(half_open, 0);
  ASSERT_EQ(send(half_open, kPreface, 10, MSG_NOSIGNAL), 10);

  for (int i = 0; i < 40; ++i) SendAndClose(port, RandomBytes(rng, 1 + rng() % 4096));
  SendAndClose(port, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  SendAndClose(port, std::string(kPreface, 5));
  for (int i = 0; i < 40; ++i) {
    std::string bytes = kPreface + Frame(4, 0, 0, "");  // SETTINGS
    const int frames = 1 + static_cast<int>(rng() % 6);
    for (int f = 0; f < frames; ++f) {
      bytes += Frame(static_cast<uint8_t>(rng() % 12), static_cast<uint8_t>(rng()),
                     static_cast<uint32_t>(rng() % 8), RandomBytes(rng, rng() % 64));
    }
    SendAndClose(port, bytes);
  }
  for (int i = 0; i < 20; ++i) {  // HEADERS (END_HEADERS) of garbage HPACK on stream 1.
    SendAndClose(
        port, kPreface + Frame(4, 0, 0, "") + Frame(1, 0x4, 1, RandomBytes(rng, 1 + rng() % 128)));
  }
  // A frame announcing 16 MiB and then silence.
  SendAndClose(port, kPreface + std::string("\xff\xff\xff\x00\x00\x00\x00\x00\x01", 9));

  EXPECT_EQ(HealthCheck(t->channel), grpc::health::v1::HealthCheckResponse::SERVING);
  const v1::GenerateRequest request = GreedyRequest({9, 8, 7}, 5);
  StreamResult got = RunGenerate(*t->stub, request);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  auto alone = t->engine->Generate({ToEngine(request)});
  ASSERT_TRUE(alone[0].ok());
  EXPECT_EQ(got.tokens, alone[0]->tokens);
  close(half_open);
}

}  // namespace
}  // namespace moe::testing
