// gRPC's own log lines (gpr_log: a failed TLS handshake, a refused connection, an internal assertion) through glog,
// so that with --log-format json they become JSON lines like every other (common/logging.h) instead of gRPC's text
// lines on stderr. gRPC's filter still applies first (GRPC_VERBOSITY, default ERROR).
#ifndef FEDTUNE_COMMON_NET_GRPC_LOGGING_H_
#define FEDTUNE_COMMON_NET_GRPC_LOGGING_H_

namespace fedtune::net {

// From now on gRPC's lines go to glog: ERROR -> LOG(ERROR), INFO and DEBUG -> LOG(INFO), with gRPC's file and line.
// Call in main() after ConfigureLogFormat (fedtune's programs do in JSON format), before gRPC is used. Thread-safe.
void RouteGrpcLogsToGlog();

// RouteGrpcLogsToGlog() when the log format is JSON; nothing in text format (gRPC's lines are already glog-like).
void RouteGrpcLogsForLogFormat();

}  // namespace fedtune::net

#endif  // FEDTUNE_COMMON_NET_GRPC_LOGGING_H_
