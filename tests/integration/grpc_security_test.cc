// Hard edge 11: the bearer token on every MoeService method (enumerated through server
// reflection) but not on health; reflection switched off; TLS and mutual TLS with
// certificates made by openssl for the test.
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "proto/health.grpc.pb.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/impl/codegen/rpc_method.h"
#include "grpcpp/impl/codegen/sync_stream.h"
#include "proto/reflection_subset.pb.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {
namespace {

namespace reflection = moe::reflection_subset;

constexpr char kToken[] = "s3cret-token";

EngineOptions Tiny() {
  EngineOptions e;
  e.threads = 1;
  e.kv_cache_bytes = 4 << 20;
  return e;
}

// One reflection exchange, on the real service's method path (what its generated stub does).
reflection::ServerReflectionResponse Reflect(const std::shared_ptr<grpc::Channel>& channel,
                                             const reflection::ServerReflectionRequest& request,
                                             grpc::Status* status) {
  static const grpc::internal::RpcMethod kMethod(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING, channel);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<reflection::ServerReflectionRequest,
                                           reflection::ServerReflectionResponse>>
      stream(grpc::internal::ClientReaderWriterFactory<
             reflection::ServerReflectionRequest,
             reflection::ServerReflectionResponse>::Create(channel.get(),
                                                          grpc::internal::RpcMethod(
                                                              kMethod.name(),
                                                              kMethod.method_type(), channel),
                                                          &context));
  reflection::ServerReflectionResponse response;
  stream->Write(request);
  stream->WritesDone();
  stream->Read(&response);
  *status = stream->Finish();
  return response;
}

// The methods of moe.v1.MoeService as the server's reflection describes them.
std::vector<std::string> MethodsByReflection(const std::shared_ptr<grpc::Channel>& channel) {
  reflection::ServerReflectionRequest list;
  list.set_list_services("");
  grpc::Status status;
  reflection::ServerReflectionResponse services = Reflect(channel, list, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> names;
  for (const auto& s : services.list_services_response().service()) names.push_back(s.name());
  EXPECT_NE(std::find(names.begin(), names.end(), "moe.v1.MoeService"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());

  reflection::ServerReflectionRequest file;
  file.set_file_containing_symbol("moe.v1.MoeService");
  reflection::ServerReflectionResponse files = Reflect(channel, file, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> methods;
  for (const std::string& bytes : files.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto proto;
    EXPECT_TRUE(proto.ParseFromString(bytes));
    for (const auto& service : proto.service()) {
      if (service.name() != "MoeService") continue;
      for (const auto& m : service.method()) methods.push_back(m.name());
    }
  }
  return methods;
}

// Calls a MoeService method by name with a valid request; the call's status.
grpc::Status CallMethod(v1::MoeService::Stub& stub, const std::string& method,
                        const std::string& token) {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  const v1::GenerateRequest request = GreedyRequest({1, 2, 3}, 2);
  if (method == "Generate") {
    auto reader = stub.Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }
  if (method == "GenerateBatch") {
    v1::GenerateBatchRequest batch;
    *batch.add_requests() = request;
    v1::GenerateBatchResponse response;
    return stub.GenerateBatch(&context, batch, &response);
  }
  if (method == "GetModelInfo") {
    v1::ModelInfo info;
    return stub.GetModelInfo(&context, {}, &info);
  }
  if (method == "Forward") {
    v1::ForwardRequest forward;
    forward.add_sequences()->add_tokens(1);
    forward.set_output(v1::FORWARD_OUTPUT_LOGITS);
    v1::ForwardResponse response;
    return stub.Forward(&context, forward, &response);
  }
  return grpc::Status(grpc::StatusCode::UNKNOWN, "the test does not know method " + method);
}

TEST(GrpcSecurityTest, BearerTokenIsCheckedOnEveryMethodButHealth) {
  server::ServerOptions o;
  o.service.bearer_token = kToken;
  auto t = StartServer(o, Tiny());
  ASSERT_NE(t, nullptr);
  const std::vector<std::string> methods = MethodsByReflection(t->channel);
  EXPECT_GE(methods.size(), 3u);
  for (const std::string& m : methods) {
    grpc::Status none = CallMethod(*t->stub, m, "");
    EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << m;
    EXPECT_EQ(none.error_message(), "missing \"authorization: Bearer <token>\" metadata") << m;
    grpc::Status wrong = CallMethod(*t->stub, m, "s3cret-tokeN");
    EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED) << m;
    EXPECT_EQ(wrong.error_message(), "the bearer token is not accepted") << m;
    grpc::Status right = CallMethod(*t->stub, m, kToken);
    EXPECT_NE(right.error_code(), grpc::StatusCode::UNAUTHENTICATED) << m;
    EXPECT_NE(right.error_code(), grpc::StatusCode::UNKNOWN) << m << ": " << right.error_message();
  }
  // Health needs no token (load balancers probe it).
  EXPECT_EQ(HealthCheck(t->channel), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(t->engine->Stats().prompt_tokens, 3 * 2);  // only the calls with the token ran
}

TEST(GrpcSecurityTest, ReflectionCanBeSwitchedOff) {
  server::ServerOptions o;
  o.reflection = false;
  auto t = StartServer(o, Tiny());
  ASSERT_NE(t, nullptr);
  reflection::ServerReflectionRequest list;
  list.set_list_services("");
  grpc::Status status;
  Reflect(t->channel, list, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(CallMethod(*t->stub, "GetModelInfo", "").ok());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, made once.
struct Certs {
  std::string dir;
  std::string ca, client_cert, client_key;
};

const Certs& TestCerts() {
  static const Certs* certs = [] {
    auto* c = new Certs;
    const char* tmp = std::getenv("TEST_TMPDIR");
    c->dir = std::string(tmp != nullptr ? tmp : "/tmp") + "/certs";
    const std::string d = c->dir;
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    std::string script = absl::StrCat(
        "set -e; mkdir -p ", d, "; cd ", d, "; ",
        "openssl req -x509 ", key, " -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca; ",
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext; ");
    for (const char* who : {"server", "client"}) {
      absl::StrAppend(&script, "openssl req ", key, " -keyout ", who, ".key -out ", who,
                      ".csr -subj /CN=localhost; openssl x509 -req -in ", who,
                      ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext",
                      " -out ", who, ".pem; ");
    }
    std::ofstream(d + ".sh") << script;
    EXPECT_EQ(std::system(("bash " + d + ".sh >/dev/null 2>&1").c_str()), 0);
    c->ca = ReadFile(d + "/ca.pem");
    c->client_cert = ReadFile(d + "/client.pem");
    c->client_key = ReadFile(d + "/client.key");
    return c;
  }();
  return *certs;
}

server::ServerOptions TlsOptions(bool mutual) {
  const Certs& c = TestCerts();
  server::ServerOptions o;
  o.tls_cert = c.dir + "/server.pem";
  o.tls_key = c.dir + "/server.key";
  if (mutual) o.tls_client_ca = c.dir + "/ca.pem";
  return o;
}

std::unique_ptr<v1::MoeService::Stub> Client(const TestServer& t,
                                             std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  return v1::MoeService::NewStub(grpc::CreateCustomChannel(t.address(), creds, args));
}

TEST(GrpcSecurityTest, TlsServesTlsClientsAndRefusesPlaintext) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = TestCerts().ca;
  auto t = StartServer(TlsOptions(false), Tiny(), grpc::SslCredentials(ssl));
  ASSERT_NE(t, nullptr);
  StreamResult got = RunGenerate(*t->stub, GreedyRequest({1, 2, 3}, 3));
  EXPECT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.tokens.size(), 3u);
  auto plain = Client(*t, grpc::InsecureChannelCredentials());
  EXPECT_EQ(CallMethod(*plain, "GetModelInfo", "").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(GrpcSecurityTest, MutualTlsNeedsAClientCertificateSignedByTheCa) {
  const Certs& c = TestCerts();
  grpc::SslCredentialsOptions with_cert;
  with_cert.pem_root_certs = c.ca;
  with_cert.pem_cert_chain = c.client_cert;
  with_cert.pem_private_key = c.client_key;
  auto t = StartServer(TlsOptions(true), Tiny(), grpc::SslCredentials(with_cert));
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(CallMethod(*t->stub, "GetModelInfo", "").ok());
  grpc::SslCredentialsOptions without_cert;
  without_cert.pem_root_certs = c.ca;
  auto anonymous = Client(*t, grpc::SslCredentials(without_cert));
  EXPECT_EQ(CallMethod(*anonymous, "GetModelInfo", "").error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST(GrpcSecurityTest, BadTlsSettingsNameTheFlagOrFile) {
  server::ServerOptions o;
  o.tls_cert = "/no/such/cert.pem";
  o.tls_key = "/no/such/key.pem";
  auto missing = server::MoeServer::Start(o);
  EXPECT_EQ(missing.status().message(), "--tls_cert=/no/such/cert.pem cannot be read");
  o.tls_key.clear();
  EXPECT_EQ(server::MoeServer::Start(o).status().message(),
            "TLS needs both --tls_cert and --tls_key");
}

}  // namespace
}  // namespace moe::testing
