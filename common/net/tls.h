// gRPC credentials for fedtune's mutually authenticated TLS: the coordinator's server credentials and the channels
// that site agents and operators dial out with, all from PEM files made by `fedtune pki`.
//
// Server side: TLS (1.2 or later, gRPC's default) asks every client for a certificate and checks that the client
// holds its private key (the handshake's CertificateVerify), but leaves the certificate's validation to the
// application: on EVERY call the coordinator hands the peer certificate (PeerCertificatePem) to
// pki::CertificateVerifier, which checks the chain to the consortium CA, validity, CRL, CA index and role, and audits
// the decision. This way a call without a certificate, or with one from another CA, reaches the coordinator's
// authorization and is refused with UNAUTHENTICATED *and audited*, instead of vanishing in a failed handshake, and a
// revocation applies to the next call on an open connection.
//
// Client side: the channel verifies the coordinator's certificate against the consortium CA and its name
// (server_name, a SAN of the coordinator's certificate) and presents the site's or operator's certificate.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_NET_TLS_H_
#define FEDTUNE_COMMON_NET_TLS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::net {

// Largest gRPC message either side accepts: a 4 MiB chunk plus framing.
inline constexpr int kMaxMessageBytes = 8 << 20;

struct TlsFiles {
  std::string cert;  // PEM certificate (leaf).
  std::string key;   // PEM private key.
  std::string ca;    // PEM CA certificate (the consortium's ca.pem).
};

// Reads the files. NotFound / PermissionDenied / InvalidArgument (not PEM) naming the file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files);

struct ChannelOptions {
  // The name the server's certificate must carry. Default: the host part of the address.
  std::string server_name;
  // gRPC keepalive: while a call is in flight, a ping every keepalive_ms, and the connection closed (its calls
  // fail with UNAVAILABLE) when a ping is not answered within keepalive_timeout_ms, so a dead coordinator, link or
  // proxy is noticed (milliseconds; keepalive_ms 0 = gRPC's default, no keepalive). At least 10000: the coordinator
  // (ConfigureServerBuilder) refuses pings that come more often.
  int keepalive_ms = 20000;
  int keepalive_timeout_ms = 10000;
  // HTTP CONNECT proxy ("http://host:port" or "http://user:password@host:port"; ValidateProxyUrl) for gRPC's channel
  // arg GRPC_ARG_HTTP_PROXY, which takes precedence over the grpc_proxy / https_proxy / http_proxy environment
  // variables; "" disables a proxy from the environment. Unset (default): the environment decides. no_grpc_proxy /
  // no_proxy apply in every case. TLS runs end to end through the tunnel.
  std::optional<std::string> proxy;
  // gRPC's own reconnect backoff under the caller's retries (milliseconds): the first retry after
  // initial_reconnect_backoff_ms, growing to at most max_reconnect_backoff_ms, so that a client started before the
  // coordinator connects within seconds of it listening (gRPC's defaults grow to 120 s). A connection attempt itself
  // may take gRPC's default 20 s.
  int initial_reconnect_backoff_ms = 500;
  int max_reconnect_backoff_ms = 5000;
};

// A channel to `address` (host:port) with the files' client certificate. The connection is made lazily.
// Errors as MakeServerCredentials; InvalidArgument for an address without a port or an invalid options.proxy
// (ValidateProxyUrl).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeClientChannel(const std::string& address, const TlsFiles& files,
                                                                 const ChannelOptions& options = {});

// Checks an HTTP CONNECT proxy URL as gRPC takes it: "http://[user[:password]@]host:port[/]" with a port in
// [1, 65535]. InvalidArgument showing the URL (its password masked) and what is wrong (https:// is refused: gRPC speaks
// plain HTTP to the proxy, and the TLS to the coordinator runs inside the tunnel).
absl::Status ValidateProxyUrl(absl::string_view url);

// The host part of "host:port" or "[v6]:port".
std::string HostOf(absl::string_view address);

// The peer's leaf certificate in PEM from the call's AuthContext ("x509_pem_cert"); empty when the peer sent none.
std::string PeerCertificatePem(const grpc::ServerContextBase& context);

// Resource limits of a gRPC server.
struct ServerLimits {
  // Threads of gRPC's synchronous server, pollers included (grpc::ResourceQuota::SetMaxThreads); a call arriving
  // when none is left is answered RESOURCE_EXHAUSTED by gRPC. 0 (default): gRPC's own (no limit). Otherwise at
  // least 4: the server runs kServerCompletionQueues completion queues, each with at least one polling thread.
  // Callback services hold no thread per call and are not limited by it.
  int max_threads = 0;
  // Memory for the server's transport buffers (grpc::ResourceQuota::Resize). 0 (default): gRPC's own (no limit).
  int64_t memory_bytes = 0;
};
inline constexpr int kServerCompletionQueues = 2;

// The server's keepalive: a ping to each client connection after kServerKeepaliveMs without traffic, and the
// connection closed (its calls cancelled) when the answer takes longer than kServerKeepaliveTimeoutMs.
inline constexpr int kServerKeepaliveMs = 30000;
inline constexpr int kServerKeepaliveTimeoutMs = 10000;

// Server builder settings shared by fedtune servers: message size limits, keepalive policy (clients may ping every
// 10 s or more, with or without calls; the server pings as above) and one resource quota with limits.memory_bytes
// and, when limits.max_threads > 0, that many threads over kServerCompletionQueues completion queues (1 to 2
// polling threads each; threads below 4 are raised to 4).
void ConfigureServerBuilder(grpc::ServerBuilder* builder, const ServerLimits& limits = {});

}  // namespace fedtune::net

#endif  // FEDTUNE_COMMON_NET_TLS_H_
