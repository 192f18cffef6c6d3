#include "common/net/grpc_logging.h"

#include <grpc/support/log.h>

#include "common/logging.h"

namespace fedtune::net {
namespace {

void ToGlog(gpr_log_func_args* args) {
  const google::LogSeverity severity =
      args->severity == GPR_LOG_SEVERITY_ERROR ? google::GLOG_ERROR : google::GLOG_INFO;
  google::LogMessage(args->file == nullptr ? "grpc" : args->file, args->line, severity).stream()
      << (args->message == nullptr ? "" : args->message);
}

}  // namespace

void RouteGrpcLogsToGlog() { gpr_set_log_function(&ToGlog); }

void RouteGrpcLogsForLogFormat() {
  if (CurrentLogFormat() == LogFormat::kJson) RouteGrpcLogsToGlog();
}

}  // namespace fedtune::net
