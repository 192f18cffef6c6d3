// The coordinator's RPC metrics as a gRPC server interceptor, so that no handler has to count its own calls: every
// call of the registered services is counted when its status is sent (fedtune_coordinator_rpcs_total{method,code},
// fedtune_coordinator_rpc_duration_seconds{method}: from the call's start on the server to its status), and the
// transfer streams are counted while they are open (fedtune_coordinator_open_streams{kind}: "download" for
// SiteService/DownloadModel and AdminService/ExportModel, "upload" for SiteService/UploadUpdate).
//
// Methods are named "Service/Method" ("SiteService/GetTask"); a call to a method outside `known_methods` (which
// bounds the label's values) is counted as "unknown". A call that ends without a status being sent (the server shut
// down under it) is counted with code "CANCELLED".
//
// Thread safety: the factory is immutable and thread-safe; gRPC serializes an interceptor's hooks.
#ifndef FEDTUNE_COORDINATOR_RPC_METRICS_INTERCEPTOR_H_
#define FEDTUNE_COORDINATOR_RPC_METRICS_INTERCEPTOR_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <set>
#include <string>

#include "absl/strings/string_view.h"
#include "coordinator/coordinator_metrics.h"

namespace fedtune::coordinator {

// "OK", "CANCELLED", ..., "UNAUTHENTICATED" (the names of grpc::StatusCode); "UNKNOWN" for a value outside them.
const char* GrpcCodeName(grpc::StatusCode code);

// "/fedtune.v1.SiteService/GetTask" -> "SiteService/GetTask" (the path without its package); "unknown" when the path
// is not in `known_methods` (full paths).
std::string RpcMethodLabel(absl::string_view path, const std::set<std::string>& known_methods);

// The full paths of the methods of the coordinator's services (fedtune.v1.SiteService, fedtune.v1.AdminService), from
// their descriptors.
std::set<std::string> CoordinatorMethods();

class RpcMetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `metrics` must outlive the server the factory is installed in.
  RpcMetricsInterceptorFactory(CoordinatorMetrics* metrics, std::set<std::string> known_methods);
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  CoordinatorMetrics* const metrics_;
  const std::set<std::string> known_methods_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_RPC_METRICS_INTERCEPTOR_H_
