// The operator commands of `fedtune` that talk to the coordinator's AdminService over mutual TLS with an operator
// certificate, as cli::Command factories for coordinator/cli/main.cc:
//
//   sites list                                  table: id, status, last seen, images, dataset, state, pinned key,
//                                               last failure ("!" when newer than the site's latest accepted update
//                                               in the latest run)
//   sites show ID                               one site and its failure reports (most recent first, log lines)
//   sites approve ID [--replace-key [--key-sha256 HEX]]
//   sites revoke ID [--reason R] [--ca-dir DIR] with --ca-dir also revokes the site's certificates in the CA
//   run start --config run.textproto            validates locally, prints the run id (only that, for scripts)
//   run status [--run R] [--watch] [--interval S]
//   run abort [--run R] [--reason R]
//   run list [--limit N]                        table: run, name, state, round, started, finished, traffic
//   model export --version DIGEST --out F [--stream-timeout S]
//   report [--run R] --out DIR                  report.json + report.html, summary table on stdout
//
// Every command also takes the connection flags of admin_client.h (--coordinator, --cert, --key, --ca,
// --server-name, --timeout; or FEDTUNE_COORDINATOR, FEDTUNE_CERT, FEDTUNE_KEY, FEDTUNE_CA, FEDTUNE_SERVER_NAME,
// FEDTUNE_TIMEOUT). Every string the coordinator returns (site ids, states, messages: often text a site sent) is
// printed through TerminalSafe (terminal_text.h): no control character or invalid UTF-8 reaches the terminal.
// Exit codes follow cli::ExitCodeFor: 0 done, 2 bad input / unknown site, run or model,
// 3 certificate refused, 1 otherwise (coordinator unreachable, I/O, a watched run that failed or was aborted).
#ifndef FEDTUNE_COORDINATOR_CLI_ADMIN_COMMANDS_H_
#define FEDTUNE_COORDINATOR_CLI_ADMIN_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/cli/command.h"
#include "coordinator/cli/admin_client.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin {

// What the commands read from and write to; the defaults are the process's. Tests replace them.
struct CommandEnvironment {
  std::ostream* out = nullptr;                // Human-readable output. Default (nullptr): std::cout.
  EnvLookup env;                              // Environment variables. Default (empty): the process environment.
  std::function<void(absl::Duration)> sleep;  // `run status --watch` between polls. Default: absl::SleepFor.
  std::function<absl::Time()> now;            // For "last seen 12s ago". Default: absl::Now.
  ExportOptions export_options;               // `model export` retries (stream_timeout comes from the flag).
};

// sites list: ListSites as a table (SitesTableText), with the sites' last successes from GetRunStatus of the latest
// run (LastAcceptedUpdates; none before the first run).
cli::Command MakeSitesListCommand(CommandEnvironment environment = {});
// sites show ID: GetSite, printed as SiteDetailText. NotFound (exit 2) for an unknown site.
cli::Command MakeSitesShowCommand(CommandEnvironment environment = {});
// sites approve ID [--replace-key [--key-sha256 HEX]]: ApproveSite; prints the site's new status and pinned key.
// --replace-key also accepts the key the site presented and was refused for (it made a new key and was re-enrolled
// with `pki sign --replace`); --key-sha256 (16 to 64 hex digits) refuses unless that key starts with HEX.
cli::Command MakeSitesApproveCommand(CommandEnvironment environment = {});
// sites revoke ID [--reason R] [--ca-dir DIR]: with --ca-dir, first revokes every enrolled site certificate with
// CN = ID in the CA at DIR and re-issues DIR/crl.pem (pki::CertificateAuthority; a site without a valid certificate
// there only gets a fresh CRL), so the certificate stops working everywhere; then RevokeSite at the coordinator,
// whose registry refuses the site from its next call.
cli::Command MakeSitesRevokeCommand(CommandEnvironment environment = {});
// run start --config F: ReadRunConfig + ValidateRunConfig (InvalidArgument naming file and field), StartRun,
// prints the run id.
cli::Command MakeRunStartCommand(CommandEnvironment environment = {});
// run status [--run R] [--watch] [--interval S (default 2)]: prints the run's state, rounds and sites. With
// --watch, polls every S seconds until the run ends (a coordinator briefly unreachable is retried, up to 30 polls in
// a row): OK when it completed, Aborted (exit 1) when it failed or was aborted.
cli::Command MakeRunStatusCommand(CommandEnvironment environment = {});
// run abort [--run R] [--reason R]: AbortRun; prints the run's resulting state.
cli::Command MakeRunAbortCommand(CommandEnvironment environment = {});
// run list [--limit N (default 20, at most 1000)]: ListRuns as a table, newest first.
cli::Command MakeRunListCommand(CommandEnvironment environment = {});
// model export --version DIGEST --out F [--stream-timeout S (default 600)]: AdminClient::ExportModel.
cli::Command MakeModelExportCommand(CommandEnvironment environment = {});
// report [--run R] --out DIR: GetRunReport, WriteConsortiumReport, prints SiteSummaryText and the two paths.
cli::Command MakeReportCommand(CommandEnvironment environment = {});

// All of the above, in the order of this header.
std::vector<cli::Command> MakeAdminCommands(const CommandEnvironment& environment = {});

// Each site's last success in `status`: the received_ms of its latest accepted update.
std::map<std::string, int64_t> LastAcceptedUpdates(const v1::RunStatus& status);
// The output of `sites list` (a TextTable), with "last seen" relative to now_ms. Its "last failure" column holds the
// site's latest failure report (stage, error class, age), marked "!" when it is newer than the site's last success in
// `last_success` (site id -> ms; `sites list` passes LastAcceptedUpdates of the latest run) or the site has none
// there, with a legend under the table when any site is marked.
std::string SitesTableText(const v1::ListSitesResponse& sites, int64_t now_ms,
                           const std::map<std::string, int64_t>& last_success = {});
// The output of `sites show`: the site's line (status, serial, pinned and refused keys), first and last seen, state,
// dataset summary, agent version and device, then its failure reports (most recent first): time, run / round / attempt
// / task kind, stage, error class and code, message, the site's time of failure and its log lines indented. Every site
// string passes through TerminalSafe (messages cut at 2048 bytes, log lines at 512).
std::string SiteDetailText(const v1::SiteResponse& site, int64_t now_ms);
// The output of `run list`.
std::string RunListText(const v1::ListRunsResponse& runs);
// The output of `run status` for one poll; under the sites table, each site's latest failure report of the run
// (round, attempt, stage, class, age, message).
std::string RunStatusText(const v1::RunStatus& status, int64_t now_ms);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_ADMIN_COMMANDS_H_
