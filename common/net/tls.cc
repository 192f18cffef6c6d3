#include "common/net/tls.h"

#include <grpcpp/resource_quota.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::net {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("no ", what, " file given"));
  ASSIGN_OR_RETURN(std::string pem, io::ReadFile(path));
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is not a PEM file"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files) {
  ASSIGN_OR_RETURN(std::string cert, ReadPem(files.cert, "server certificate"));
  ASSIGN_OR_RETURN(std::string key, ReadPem(files.key, "server key"));
  ASSIGN_OR_RETURN(std::string ca, ReadPem(files.ca, "CA certificate"));
  // Validation of the client certificate happens on every call (see the header), so that refusals are audited.
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({key, cert});
  return grpc::SslServerCredentials(options);
}

absl::Status ValidateProxyUrl(absl::string_view url) {
  // Messages show the URL without its password ("user:***@host:port").
  std::string shown(url);
  const size_t at = shown.rfind('@');
  const size_t user_end = shown.find(':', shown.find("://") == std::string::npos ? 0 : shown.find("://") + 3);
  if (at != std::string::npos && user_end != std::string::npos && user_end < at) {
    shown.replace(user_end + 1, at - user_end - 1, "***");
  }
  auto bad = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat("proxy \"", shown, "\" ", problem));
  };
  constexpr absl::string_view kScheme = "http://";
  if (!absl::StartsWithIgnoreCase(url, kScheme)) {
    if (absl::StartsWithIgnoreCase(url, "https://")) {
      return bad(
          "uses https://, which gRPC does not support: give http://host:port (TLS to the coordinator runs "
          "inside the proxy's CONNECT tunnel either way)");
    }
    return bad("must be http://host:port");
  }
  absl::string_view authority = url.substr(kScheme.size());
  if (absl::EndsWith(authority, "/")) authority.remove_suffix(1);
  if (absl::StrContains(authority, "/") || absl::StrContains(authority, "?") || absl::StrContains(authority, "#")) {
    return bad("must be http://host:port, without a path");
  }
  const size_t userinfo_end = authority.rfind('@');
  if (userinfo_end != absl::string_view::npos) authority = authority.substr(userinfo_end + 1);
  const size_t colon = authority.rfind(':');
  int port = 0;
  const size_t bracket = authority.rfind(']');
  if (colon == absl::string_view::npos || colon == 0 || (bracket != absl::string_view::npos && bracket > colon) ||
      !absl::SimpleAtoi(authority.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return bad("must be http://host:port with a port in [1, 65535]");
  }
  return absl::OkStatus();
}

std::string HostOf(absl::string_view address) {
  if (!address.empty() && address.front() == '[') {
    const size_t end = address.find(']');
    if (end != absl::string_view::npos) return std::string(address.substr(1, end - 1));
  }
  const size_t colon = address.rfind(':');
  return std::string(colon == absl::string_view::npos ? address : address.substr(0, colon));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeClientChannel(const std::string& address, const TlsFiles& files,
                                                                 const ChannelOptions& options) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat("coordinator address '", address, "' has no port (host:port)"));
  }
  if (options.proxy.has_value() && !options.proxy->empty()) RETURN_IF_ERROR(ValidateProxyUrl(*options.proxy));
  ASSIGN_OR_RETURN(std::string cert, ReadPem(files.cert, "client certificate"));
  ASSIGN_OR_RETURN(std::string key, ReadPem(files.key, "client key"));
  ASSIGN_OR_RETURN(std::string ca, ReadPem(files.ca, "CA certificate"));
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca;
  ssl.pem_private_key = key;
  ssl.pem_cert_chain = cert;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  const std::string name = options.server_name.empty() ? HostOf(address) : options.server_name;
  args.SetSslTargetNameOverride(name);
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also takes it as the minimum time a connection attempt (TCP + TLS
  // handshake) may take, and a small value makes handshakes with a busy coordinator fail.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, options.initial_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, options.max_reconnect_backoff_ms);
  if (options.keepalive_ms > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
    // Keep pinging while the only call is a long-poll or a download, during which the client sends no data: gRPC
    // would otherwise stop after 2 pings (and space pings without data by 5 minutes).
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, options.keepalive_ms);
  }
  if (options.proxy.has_value()) args.SetString(GRPC_ARG_HTTP_PROXY, *options.proxy);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

std::string PeerCertificatePem(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return "";
  for (const grpc::string_ref& value : auth->FindPropertyValues("x509_pem_cert")) {
    return std::string(value.data(), value.size());
  }
  return "";
}

void ConfigureServerBuilder(grpc::ServerBuilder* builder, const ServerLimits& limits) {
  builder->SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder->SetMaxSendMessageSize(kMaxMessageBytes);
  // Accept the clients' keepalive pings (every 20 s, also without calls in flight).
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // And ping the clients: without it a connection whose link died silently (no FIN, no RST) keeps its calls open
  // until TCP gives up (15 minutes or more; never for an upload stream, on which the server only receives), and the
  // site's resumed upload is refused as long as the old stream holds its spool file.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kServerKeepaliveMs);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kServerKeepaliveTimeoutMs);
  if (limits.max_threads <= 0 && limits.memory_bytes <= 0) return;
  grpc::ResourceQuota quota("fedtune-server");
  if (limits.max_threads > 0) {
    // A fixed, small number of completion queues: gRPC's default is one per core, each reserving a polling thread
    // from the quota at start-up (and aborting when the quota cannot hold them).
    builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, kServerCompletionQueues);
    builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
    builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 2);
    quota.SetMaxThreads(std::max(limits.max_threads, 2 * kServerCompletionQueues));
  }
  if (limits.memory_bytes > 0) quota.Resize(static_cast<size_t>(limits.memory_bytes));
  builder->SetResourceQuota(quota);
}

}  // namespace fedtune::net
