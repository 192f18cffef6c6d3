#include "coordinator/coordinator_server.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/net/tls.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_config.h"
#include "coordinator/rpc_metrics_interceptor.h"

namespace fedtune::coordinator {
namespace {

RoundManagerOptions RoundOptionsFor(const v1::CoordinatorConfig& config, const std::string& state_dir,
                                    std::function<absl::Time()> clock, CoordinatorMetrics* metrics) {
  RoundManagerOptions round_options;
  round_options.state_dir = state_dir;
  round_options.clock = std::move(clock);
  round_options.heartbeat_timeout_seconds = config.heartbeat_timeout_seconds();
  round_options.max_upload_bytes = config.max_upload_bytes();
  round_options.max_open_uploads_per_site = config.max_open_uploads_per_site();
  round_options.max_spool_bytes_per_site = SpoolBytesPerSite(config);
  round_options.max_spool_bytes_per_round = SpoolBytesPerRound(config);
  round_options.metrics = metrics;
  return round_options;
}

SiteServiceOptions SiteOptionsFor(const v1::CoordinatorConfig& config, std::function<absl::Time()> clock,
                                  CoordinatorMetrics* metrics) {
  SiteServiceOptions site_options;
  site_options.chunk_bytes = config.chunk_bytes();
  site_options.task_wait_seconds = config.task_wait_seconds();
  site_options.heartbeat_seconds = std::max(1, config.heartbeat_timeout_seconds() / 6);
  site_options.call_limits.max_calls_per_site = config.max_calls_per_site();
  site_options.call_limits.max_streams_per_site = config.max_streams_per_site();
  site_options.auto_approve = config.auto_approve();
  site_options.max_concurrent_decodes = config.max_concurrent_decodes();
  site_options.clock = std::move(clock);
  site_options.metrics = metrics;
  return site_options;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(const v1::CoordinatorConfig& config,
                                                                CoordinatorOptions options) {
  RETURN_IF_ERROR(ValidateCoordinatorConfig(config));
  std::unique_ptr<Coordinator> c(new Coordinator());
  RETURN_IF_ERROR(io::MakeDirectories(config.state_dir()));
  // Absolute, so that every path the coordinator forms is one (messages to sites are scrubbed of absolute paths).
  std::error_code ec;
  std::string dir = std::filesystem::absolute(config.state_dir(), ec).lexically_normal().string();
  if (ec || dir.empty()) dir = config.state_dir();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  ASSIGN_OR_RETURN(c->store_, StateStore::Open(dir + "/coordinator.db"));
  ASSIGN_OR_RETURN(c->blobs_, BlobStore::Open(dir + "/blobs"));
  std::function<absl::Time()> clock = options.clock ? options.clock : [] { return absl::Now(); };
  if (!config.initial_model().empty()) {
    absl::StatusOr<std::string> digest = c->blobs_->Import(config.initial_model());
    if (!digest.ok()) {
      return absl::Status(digest.status().code(), absl::StrCat("initial_model: ", digest.status().message()));
    }
    ModelVersion version;
    version.digest = *digest;
    version.path = c->blobs_->PathOf(*digest);
    ASSIGN_OR_RETURN(version.bytes, c->blobs_->Size(*digest));
    version.created_ms = absl::ToUnixMillis(clock());
    RETURN_IF_ERROR(c->store_->PutModelVersion(version));
    LOG(INFO) << "initial model " << config.initial_model() << " is model version " << *digest;
  }
  pki::VerifierOptions verifier_options = pki::VerifierOptions::ForCaDir(config.ca_dir());
  verifier_options.reject_stale_crl = config.reject_stale_crl();
  ASSIGN_OR_RETURN(c->verifier_, pki::CertificateVerifier::Create(verifier_options));
  c->authorizer_ = std::make_unique<Authorizer>(c->verifier_.get(), c->store_.get(), clock);

  CoordinatorMetricsOptions metrics_options;
  metrics_options.clock = clock;
  metrics_options.heartbeat_timeout_seconds = config.heartbeat_timeout_seconds();
  c->metrics_ = std::make_unique<CoordinatorMetrics>(metrics_options);
  ASSIGN_OR_RETURN(c->rounds_, RoundManager::Create(c->store_.get(), c->blobs_.get(),
                                                    RoundOptionsFor(config, dir, clock, c->metrics_.get())));
  c->site_service_ =
      std::make_unique<SiteServiceImpl>(c->authorizer_.get(), c->store_.get(), c->blobs_.get(), c->rounds_.get(),
                                        SiteOptionsFor(config, clock, c->metrics_.get()));
  AdminServiceOptions admin_options;
  admin_options.chunk_bytes = config.chunk_bytes();
  admin_options.clock = clock;
  c->admin_service_ = std::make_unique<AdminServiceImpl>(c->authorizer_.get(), c->store_.get(), c->blobs_.get(),
                                                         c->rounds_.get(), admin_options);

  if (!config.metrics_listen_address().empty()) {
    ASSIGN_OR_RETURN(
        c->metrics_server_,
        metrics::MetricsServer::Start(config.metrics_listen_address(), c->metrics_->registry(),
                                      config.metrics_port_file(), {c->metrics_->StateCollector(c->store_.get(), dir)}));
  }

  net::TlsFiles files{config.server_cert(), config.server_key(), config.ca_dir() + "/ca.pem"};
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, net::MakeServerCredentials(files));
  grpc::ServerBuilder builder;
  net::ServerLimits limits;
  // No thread limit: the services are callback services, which hold no thread per call (the synchronous pool's
  // limit, max_server_threads, would not bound them); their buffers are bounded by the memory quota.
  limits.memory_bytes = config.grpc_memory_quota_bytes();
  net::ConfigureServerBuilder(&builder, limits);
  builder.AddListeningPort(config.listen_address(), credentials, &c->port_);
  builder.RegisterService(c->site_service_.get());
  builder.RegisterService(c->admin_service_.get());
  // Every call counted by method and code (rpc_metrics_interceptor.h), with or without a metrics endpoint.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<RpcMetricsInterceptorFactory>(c->metrics_.get(), CoordinatorMethods()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr || c->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("listen_address: cannot listen on ", config.listen_address()));
  }
  if (options.tick_period > absl::ZeroDuration()) {
    Coordinator* self = c.get();
    const absl::Duration period = options.tick_period;
    c->ticker_ = std::thread([self, period] {
      while (!self->stop_.WaitForNotificationWithTimeout(period)) {
        absl::Status status = self->rounds_->Tick();
        if (!status.ok()) LOG(ERROR) << "round deadlines: " << status;
      }
    });
  }
  if (!config.port_file().empty()) {
    absl::Status written = io::WriteFileAtomically(config.port_file(), absl::StrCat(c->port_, "\n"));
    if (!written.ok()) {
      c->Shutdown();
      return absl::Status(written.code(), absl::StrCat("port_file: ", written.message()));
    }
  }
  LOG(INFO) << "fedtune-coordinator listening on port " << c->port_ << " (" << config.listen_address() << "), state in "
            << dir;
  return c;
}

void Coordinator::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (rounds_) rounds_->Shutdown();
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (ticker_.joinable()) ticker_.join();
  // Long-polls are answered first: the server's Shutdown waits for every call to be answered. Streams still in
  // flight after 2 s are cancelled (uploads and downloads resume); an upload being decoded finishes on the decode
  // workers, which stop only after the server.
  if (site_service_) site_service_->EndLongPolls();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (site_service_) site_service_->StopDecoders();
}

Coordinator::~Coordinator() { Shutdown(); }

}  // namespace fedtune::coordinator
