// Conversion between absl::Status (the code's errors) and grpc::Status (the wire), done once at each RPC boundary.
#ifndef FEDTUNE_COMMON_NET_GRPC_STATUS_H_
#define FEDTUNE_COMMON_NET_GRPC_STATUS_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedtune::net {

// Same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// `text` with every absolute path replaced by "<path>": a '/' that starts a word (at the start, or after a space,
// quote, bracket, '=', ':', ',' or ';') followed by a path character, up to the next space, quote or closing
// bracket; trailing '.', ',', ':' and ';' stay. "SiteService/Hello" and "1/2" are not paths.
std::string RedactPaths(absl::string_view text);

// ToGrpcStatus for a peer on another host (a site): the same code, the message with RedactPaths applied, so that
// the server's file layout is not disclosed. The caller logs the full status where the message changed.
grpc::Status ToPeerGrpcStatus(const absl::Status& status);

// Same code; the message is prefixed with `what` (e.g. "coordinator 10.0.0.5:7443: Hello") so the caller's log
// names the peer and call.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what);

}  // namespace fedtune::net

#endif  // FEDTUNE_COMMON_NET_GRPC_STATUS_H_
