// moduleformer-server: serves a ModuleFormer / MoLM model over gRPC.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpc/support/log.h>
#include <grpcpp/health_check_service_interface.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "server/command_line.h"
#include "server/listener.h"
#include "server/openai_http.h"
#include "server/model_flags.h"
#include "server/service.h"
#include "server/wire.h"

ABSL_FLAG(std::string, tokenizer, "", "Tokenizer directory (default: the model directory, if it has one)");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on");
ABSL_FLAG(int32_t, port, 50051, "gRPC port (0: pick a free one and print it)");
ABSL_FLAG(std::string, port_file, "", "Write the port actually bound to this file once serving");
ABSL_FLAG(int32_t, metrics_port, 9400, "Prometheus /metrics port (0: pick a free one; -1: no exporter)");
ABSL_FLAG(std::string, metrics_port_file, "", "Write the metrics port actually bound to this file");
ABSL_FLAG(int32_t, http_port, 8000, "OpenAI-compatible HTTP API port (0: pick a free one; -1: off)");
ABSL_FLAG(std::string, http_port_file, "", "Write the HTTP API port actually bound to this file");
ABSL_FLAG(std::string, served_model_name, "",
          "The model name of the HTTP API (default: the model folder's name, or the random config's)");
ABSL_FLAG(int32_t, max_batch_tokens, 0,
          "Tokens per engine step, all requests together (0: 8192 on CUDA, where larger prompt chunks run "
          "nearer the engine's prefill rate; 2048 on the CPU)");
ABSL_FLAG(int32_t, max_running, 256, "Sequences generating at once");
ABSL_FLAG(int32_t, max_queued, 1024, "Waiting requests before new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_context, 4096, "Prompt + generated tokens per request");
ABSL_FLAG(int32_t, sampling_threads, -1,
          "Threads that sample large batches with the engine loop (-1: half the usable cores, at most 8; 0: the loop alone)");
ABSL_FLAG(bool, device_sampling, true,
          "Sample on the GPU (only chosen tokens and asked log-probabilities come back); false: download each sampled "
          "row's logits and sample on the host");
ABSL_FLAG(std::string, request_log, "",
          "Log every finished Generate/Stream call as a JSON line to stdout, stderr or this file (empty: no log)");
ABSL_FLAG(int32_t, stream_stall_timeout_seconds, 60,
          "Cancel a stream whose client has read nothing for this long (it is paused, holding its KV cache, "
          "once 32 messages wait unsent)");
ABSL_FLAG(int32_t, drain_delay_seconds, 0,
          "On SIGTERM, keep serving new requests this long (reporting NOT_SERVING) before refusing them, "
          "so load balancers stop routing here first");
ABSL_FLAG(int32_t, drain_grace_seconds, 30, "On SIGTERM, after the delay, time for in-flight requests to finish");
ABSL_FLAG(int32_t, max_message_mb, 16, "Largest request message accepted");
ABSL_FLAG(int32_t, max_concurrent_streams, 1024, "HTTP/2 streams per client connection");
ABSL_FLAG(std::string, chat_template, "",
          "Jinja chat template file for /v1/chat/completions; default: the tokenizer's (chat_template.jinja or "
          "tokenizer_config.json), else a plain 'Role: content' template");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain; with --tls-key, serve TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates; with --tls-cert, clients must present a certificate they signed (mutual TLS)");
ABSL_FLAG(std::string, api_key_file, "",
          "A file of API keys, one a line: calls must carry 'authorization: Bearer KEY' (health checks stay open)");

namespace {

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "error: cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::shared_ptr<grpc::ServerCredentials> Credentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) {
    std::fprintf(stderr, "error: --tls-cert and --tls-key go together\n");
    std::exit(2);
  }
  const std::string client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() && !client_ca.empty()) {
    std::fprintf(stderr, "error: --tls-client-ca needs --tls-cert and --tls-key\n");
    std::exit(2);
  }
  if (cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(client_ca.empty()
                                                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_key_cert_pairs.push_back({ReadFileOrDie(key), ReadFileOrDie(cert)});
  if (!client_ca.empty()) options.pem_root_certs = ReadFileOrDie(client_ca);
  return grpc::SslServerCredentials(options);
}

// Cores this process may run on (its CPU affinity, as a container's cpuset sets it).
int UsableCores() {
  cpu_set_t cores;
  if (sched_getaffinity(0, sizeof(cores), &cores) == 0) return CPU_COUNT(&cores);
  return static_cast<int>(std::thread::hardware_concurrency());
}

std::unique_ptr<mf::Engine> StartEngine(mf::EngineObserver* observer) {
  const mf::ModelSource source = mf::ModelSourceFromFlags();
  auto model = mf::LoadModel(source);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    std::exit(1);
  }
  const mf::KvCache& cache = (*model)->kv_cache();
  std::fprintf(stderr,
               "moduleformer-server: %s backend, %s precision, sampling on the %s; KV cache %.2f GiB (%s): %d blocks "
               "of %d tokens, %lld tokens\n",
               (*model)->backend().name().c_str(), source.precision.c_str(),
               (*model)->SamplesOnDevice() && absl::GetFlag(FLAGS_device_sampling) ? "device" : "host",
               static_cast<double>(cache.memory_bytes()) / (1 << 30),
               source.cache.num_blocks > 0          ? "--kv-cache-blocks"
               : source.cache.memory_fraction > 0 ? absl::StrCat(source.cache.memory_fraction, " of free memory").c_str()
                                                  : "--kv-cache-mb",
               cache.allocator().num_blocks(), cache.block_size(),
               static_cast<long long>(cache.allocator().num_blocks()) * cache.block_size());
  auto tokenizer = mf::LoadTokenizerIfPresent(absl::GetFlag(FLAGS_tokenizer), source.model_dir);
  if (tokenizer.ok() && *tokenizer != nullptr) {
    if (absl::Status fits = mf::CheckTokenizerFitsModel(**tokenizer, (*model)->config()); !fits.ok()) tokenizer = fits;
  }
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(tokenizer.status().message()).c_str());
    std::exit(1);
  }
  mf::EngineConfig config;
  config.scheduler.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  if (config.scheduler.max_batch_tokens <= 0) {
    config.scheduler.max_batch_tokens = (*model)->backend().name() == "cuda" ? 8192 : 2048;
  }
  config.scheduler.max_running = absl::GetFlag(FLAGS_max_running);
  config.max_waiting = absl::GetFlag(FLAGS_max_queued);
  config.max_context = absl::GetFlag(FLAGS_max_context);
  config.sampling_threads = absl::GetFlag(FLAGS_sampling_threads);
  config.device_sampling = absl::GetFlag(FLAGS_device_sampling);
  config.stall_timeout = absl::Seconds(absl::GetFlag(FLAGS_stream_stall_timeout_seconds));
  if (config.sampling_threads < 0) {
    config.sampling_threads = std::min(8, UsableCores() / 2);
  }
  config.observer = observer;
  return std::make_unique<mf::Engine>(*std::move(model), *std::move(tokenizer), config);
}

// The chat template of the model's tokenizer directory, --chat-template, or the plain one;
// null when the model has no tokenizer.
absl::StatusOr<std::unique_ptr<mf::ChatTemplate>> LoadChatTemplate(const mf::ModelSource& source,
                                                                   const mf::Engine& engine) {
  if (engine.tokenizer() == nullptr) return std::unique_ptr<mf::ChatTemplate>();
  const std::string dir = absl::GetFlag(FLAGS_tokenizer).empty() ? source.model_dir : absl::GetFlag(FLAGS_tokenizer);
  const std::string file = absl::GetFlag(FLAGS_chat_template);
  auto loaded = file.empty() ? mf::ChatTemplate::Load(dir) : mf::ChatTemplate::FromFile(file, dir);
  if (!loaded.ok()) return loaded.status();
  return std::make_unique<mf::ChatTemplate>(*std::move(loaded));
}

// Startup stops at the first error, said on stderr.
int StartupFailure(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

// gRPC's log, watched for the one line that says its listener died: gRPC 1.51 logs
// "Failed accept4" once when accept fails (EMFILE) and never accepts again.
void OnGrpcLog(gpr_log_func_args* args) {
  std::fprintf(stderr, "%s %s:%d] %s\n", gpr_log_severity_string(args->severity), args->file, args->line,
               args->message);
  if (args->message != nullptr && std::strstr(args->message, "Failed accept4") != nullptr) kill(getpid(), SIGUSR1);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("moduleformer-server [--model DIR] [--port 50051] [--device cpu] ...");
  mf::ParseFlags(argc, argv);
  // SIGTERM/SIGINT are taken synchronously by the main thread (sigwait); every
  // thread started from here on inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // from OnGrpcLog
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  gpr_set_log_function(OnGrpcLog);
  const int64_t open_files = mf::server::RaiseOpenFileLimit();

  const mf::ModelSource source = mf::ModelSourceFromFlags();
  const std::string model_name = source.model_dir.empty() ? source.random_config : source.model_dir;
  const bool export_metrics = absl::GetFlag(FLAGS_metrics_port) >= 0;
  auto metrics = std::make_unique<mf::server::ServerMetrics>(model_name, source.device);
  if (export_metrics) {
    // Before the model loads, so a busy port fails fast.
    if (absl::Status status = metrics->StartHttp(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
        !status.ok()) {
      return StartupFailure(status);
    }
  }
  std::unique_ptr<mf::Engine> engine = StartEngine(export_metrics ? metrics.get() : nullptr);
  if (export_metrics) {
    metrics->AttachEngine(engine.get());
    if (!absl::GetFlag(FLAGS_metrics_port_file).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_metrics_port_file)) << metrics->port() << "\n";
    }
  }
  // Outlives the service: calls still finishing during shutdown write to it.
  std::unique_ptr<mf::server::RequestLog> request_log;
  if (!absl::GetFlag(FLAGS_request_log).empty()) {
    auto opened = mf::server::RequestLog::Open(absl::GetFlag(FLAGS_request_log));
    if (!opened.ok()) return StartupFailure(opened.status());
    request_log = *std::move(opened);
  }
  std::unique_ptr<mf::server::ApiKeys> api_keys;
  if (!absl::GetFlag(FLAGS_api_key_file).empty()) {
    auto loaded = mf::server::ApiKeys::Load(absl::GetFlag(FLAGS_api_key_file));
    if (!loaded.ok()) return StartupFailure(loaded.status());
    api_keys = std::make_unique<mf::server::ApiKeys>(*std::move(loaded));
  }
  mf::server::ModuleFormerService service(*engine, model_name, source.device,
                                          export_metrics ? metrics.get() : nullptr, request_log.get(),
                                          api_keys.get());

  mf::server::QuietProtobufUtf8Errors();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int selected_port = 0;
  const std::string address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  // Plaintext connections come through our own listener (server/listener.h: it survives
  // descriptor exhaustion); TLS needs gRPC's, watched by OnGrpcLog.
  std::unique_ptr<mf::server::Listener> listener;
  const bool tls = !absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty();
  if (tls) {
    builder.AddListeningPort(address, Credentials(), &selected_port);
  } else {
    auto bound = mf::server::Listener::Bind(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_port));
    if (!bound.ok()) return StartupFailure(bound.status());
    listener = *std::move(bound);
    selected_port = listener->port();
  }
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_mb) << 20);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, absl::GetFlag(FLAGS_max_concurrent_streams));
  // Keepalive: find dead peers of long streams; tolerate clients pinging every 10 s.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10'000);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    std::fprintf(stderr, "error: cannot listen on %s\n", address.c_str());
    return 1;
  }
  if (listener != nullptr) listener->Start(server.get());
  std::unique_ptr<mf::server::OpenAiHttpServer> http_api;
  std::unique_ptr<mf::ChatTemplate> chat_template;
  const mf::server::HttpTls http_tls{absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                     absl::GetFlag(FLAGS_tls_client_ca)};
  if (absl::GetFlag(FLAGS_http_port) >= 0) {
    auto loaded_template = LoadChatTemplate(source, *engine);
    if (!loaded_template.ok()) return StartupFailure(loaded_template.status());
    chat_template = *std::move(loaded_template);
    mf::server::OpenAiHttpOptions options;
    options.chat_template = chat_template.get();
    options.request_log = request_log.get();
    options.tls = tls ? &http_tls : nullptr;
    options.served_model_name = absl::GetFlag(FLAGS_served_model_name);
    if (options.served_model_name.empty()) options.served_model_name = std::filesystem::path(model_name).stem().string();
    options.api_keys = api_keys.get();
    options.metrics = export_metrics ? metrics.get() : nullptr;
    http_api = std::make_unique<mf::server::OpenAiHttpServer>(*engine, options);
    if (absl::Status status = http_api->Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_http_port));
        !status.ok()) {
      return StartupFailure(status);
    }
    if (!absl::GetFlag(FLAGS_http_port_file).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_http_port_file)) << http_api->port() << "\n";
    }
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_port_file)) << selected_port << "\n";
  }
  std::fprintf(stderr,
               "moduleformer-server: serving %s on %s:%d, metrics on port %d, OpenAI API on port %d%s (backend %s, "
               "tokenizer %s, %lld open files%s)\n",
               model_name.c_str(), absl::GetFlag(FLAGS_host).c_str(), selected_port, metrics->port(),
               http_api != nullptr ? http_api->port() : -1,
               chat_template != nullptr ? absl::StrCat(", chat template: ", chat_template->origin()).c_str() : "",
               source.device.c_str(), engine->tokenizer() != nullptr ? "yes" : "none",
               static_cast<long long>(open_files),
               api_keys != nullptr ? absl::StrCat(", ", api_keys->size(), " API keys").c_str() : "");

  int received = 0;
  sigwait(&signals, &received);
  if (received == SIGUSR1) {
    // gRPC's listener died (see OnGrpcLog): a live process that accepts nothing helps no
    // one. Report it, finish what is running, exit non-zero for the supervisor to restart.
    std::fprintf(stderr, "moduleformer-server: the gRPC listener stopped accepting connections (descriptors "
                         "exhausted); exiting so a supervisor restarts this server\n");
    server->GetHealthCheckService()->SetServingStatus(false);
    engine->MarkDraining();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_drain_grace_seconds)));
    engine->StopAccepting();
    metrics->DetachEngine();
    return 3;
  }
  const int delay_seconds = absl::GetFlag(FLAGS_drain_delay_seconds);
  const int grace_seconds = absl::GetFlag(FLAGS_drain_grace_seconds);
  std::fprintf(stderr, "moduleformer-server: signal %d, draining (delay %ds, grace %ds)\n", received, delay_seconds,
               grace_seconds);
  server->GetHealthCheckService()->SetServingStatus(false);
  engine->MarkDraining();
  absl::SleepFor(absl::Seconds(delay_seconds));
  // Shutdown closes the listener and refuses new streams at the transport, which clients
  // and proxies (nginx grpc_next_upstream) retry on another replica; calls already
  // accepted run to completion until the deadline, then are cancelled.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(grace_seconds);
  if (listener != nullptr) listener->Close();
  // Both APIs stop accepting together and drain to the same deadline.
  std::thread http_drain;
  if (http_api != nullptr) {
    http_drain = std::thread([&http_api, deadline] { http_api->Drain(absl::FromChrono(deadline)); });
  }
  server->Shutdown(deadline);
  if (http_drain.joinable()) http_drain.join();
  const bool drained = std::chrono::system_clock::now() < deadline;
  engine->StopAccepting();
  metrics->DetachEngine();
  engine.reset();
  std::fprintf(stderr, "moduleformer-server: %s\n", drained ? "drained, exiting" : "grace period over, exiting");
  return 0;
}
