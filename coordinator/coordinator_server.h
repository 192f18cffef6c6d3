// The coordinator daemon as an object: opens the state (StateStore, BlobStore), imports the initial model,
// recovers the active run (RoundManager), and serves SiteService and AdminService on one mutually authenticated TLS
// port, with a background thread applying round deadlines. `fedtune-coordinator` (main.cc) is a thin wrapper;
// tests create, destroy and re-create it on the same state_dir to simulate a restart.
//
// Thread safety: Start/Shutdown from one thread; the accessors are safe while the server runs.
#ifndef FEDTUNE_COORDINATOR_COORDINATOR_SERVER_H_
#define FEDTUNE_COORDINATOR_COORDINATOR_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics/metrics_server.h"
#include "common/pki/verifier.h"
#include "coordinator/admin_service.h"
#include "coordinator/authorizer.h"
#include "coordinator/blob_store.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/round_manager.h"
#include "coordinator/site_service.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::coordinator {

struct CoordinatorOptions {
  // Time source for rounds, audit and sites. Default absl::Now.
  std::function<absl::Time()> clock;
  // Period of the deadline checks (RoundManager::Tick). Default 200 ms; absl::ZeroDuration() disables the thread
  // (tests then call rounds()->Tick()).
  absl::Duration tick_period = absl::Milliseconds(200);
};

class Coordinator {
 public:
  // Validates `config` (ValidateCoordinatorConfig: InvalidArgument naming the field), creates state_dir, opens
  // coordinator.db and blobs/, imports config.initial_model (a model version without parent; NotFound naming the
  // file), loads the CA directory, recovers the active run, starts the server on listen_address (gRPC's callback API
  // under a memory quota of grpc_memory_quota_bytes; the per-site, spool and decode limits of the config) and then
  // writes port_file atomically. state_dir is used as an absolute path. Unavailable when the address cannot be bound.
  // With metrics_listen_address, the Prometheus endpoint (coordinator_metrics.h) starts before the gRPC server and
  // writes metrics_port_file; MetricsServer::Start's errors (Unavailable naming the address when it cannot be bound).
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(const v1::CoordinatorConfig& config,
                                                            CoordinatorOptions options = {});
  // Shuts down (see Shutdown).
  ~Coordinator();

  // Ends long-polls, stops the deadline thread and shuts the server down (in-flight calls get 2 s, then are cancelled:
  // uploads and downloads resume). Idempotent.
  void Shutdown();

  int port() const { return port_; }
  // The metrics endpoint's port; 0 without metrics_listen_address.
  int metrics_port() const { return metrics_server_ ? metrics_server_->port() : 0; }
  // Always present (counted with or without an endpoint).
  CoordinatorMetrics* metrics() { return metrics_.get(); }
  StateStore* store() { return store_.get(); }
  BlobStore* blobs() { return blobs_.get(); }
  RoundManager* rounds() { return rounds_.get(); }
  SiteServiceImpl* site_service() { return site_service_.get(); }

 private:
  Coordinator() = default;

  // First: outlives everything that counts into it (the services, the RPC interceptors, the round manager).
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<pki::CertificateVerifier> verifier_;
  std::unique_ptr<Authorizer> authorizer_;
  std::unique_ptr<RoundManager> rounds_;
  std::unique_ptr<SiteServiceImpl> site_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Notification stop_;
  std::thread ticker_;
  bool shut_down_ = false;
  // Last: stopped first, so no scrape reads the state store while it closes.
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_COORDINATOR_SERVER_H_
