#include "coordinator/rpc_metrics_interceptor.h"

#include <chrono>
#include <utility>

#include "fedtune/v1/federation.pb.h"
#include "google/protobuf/descriptor.h"

namespace fedtune::coordinator {
namespace {

using grpc::experimental::InterceptionHookPoints;

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(CoordinatorMetrics* metrics, std::string method, const char* stream_kind)
      : metrics_(metrics), method_(std::move(method)), stream_kind_(stream_kind), start_(Clock::now()) {
    if (stream_kind_ != nullptr) metrics_->StreamOpened(stream_kind_);
  }

  ~RpcMetricsInterceptor() override {
    if (!counted_) Count("CANCELLED");
    if (stream_kind_ != nullptr) metrics_->StreamClosed(stream_kind_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (!counted_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Count(GrpcCodeName(methods->GetSendStatus().error_code()));
    }
    methods->Proceed();
  }

 private:
  using Clock = std::chrono::steady_clock;

  void Count(const char* code) {
    counted_ = true;
    metrics_->RpcFinished(method_, code, std::chrono::duration<double>(Clock::now() - start_).count());
  }

  CoordinatorMetrics* const metrics_;
  const std::string method_;
  const char* const stream_kind_;  // nullptr: not a transfer stream.
  const Clock::time_point start_;
  bool counted_ = false;
};

void AddMethods(const google::protobuf::ServiceDescriptor* service, std::set<std::string>* out) {
  if (service == nullptr) return;
  for (int i = 0; i < service->method_count(); ++i) {
    out->insert("/" + service->full_name() + "/" + service->method(i)->name());
  }
}

}  // namespace

const char* GrpcCodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(sizeof(kNames) / sizeof(kNames[0])) ? kNames[i] : "UNKNOWN";
}

std::string RpcMethodLabel(absl::string_view path, const std::set<std::string>& known_methods) {
  if (known_methods.count(std::string(path)) == 0) return "unknown";
  // "/fedtune.v1.SiteService/GetTask": the service's short name is after the last '.' before the method's '/'.
  const size_t slash = path.rfind('/');
  const size_t dot = path.rfind('.', slash);
  return std::string(path.substr(dot == absl::string_view::npos ? 1 : dot + 1));
}

std::set<std::string> CoordinatorMethods() {
  std::set<std::string> methods;
  // federation.proto declares both services.
  const google::protobuf::FileDescriptor* file = v1::HelloRequest::descriptor()->file();
  AddMethods(file->FindServiceByName("SiteService"), &methods);
  AddMethods(file->FindServiceByName("AdminService"), &methods);
  return methods;
}

RpcMetricsInterceptorFactory::RpcMetricsInterceptorFactory(CoordinatorMetrics* metrics,
                                                           std::set<std::string> known_methods)
    : metrics_(metrics), known_methods_(std::move(known_methods)) {}

grpc::experimental::Interceptor* RpcMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const std::string method = RpcMethodLabel(info->method() == nullptr ? "" : info->method(), known_methods_);
  const char* kind = nullptr;
  if (method == "SiteService/DownloadModel" || method == "AdminService/ExportModel") kind = "download";
  if (method == "SiteService/UploadUpdate") kind = "upload";
  return new RpcMetricsInterceptor(metrics_, method, kind);
}

}  // namespace fedtune::coordinator
