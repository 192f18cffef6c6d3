#include "coordinator/cli/admin_commands.h"

#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/federation/failure_stage.h"
#include "common/federation/states.h"
#include "common/pki/certificate_authority.h"
#include "common/status_macros.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/run_config.h"
#include "coordinator/cli/terminal_text.h"
#include "coordinator/cli/text_table.h"

namespace fedtune::admin {
namespace {

// Polls of `run status --watch` that may fail in a row (coordinator restarting) before the watch gives up.
constexpr int kMaxWatchFailures = 30;

// The environment with every default filled in.
struct Env {
  std::ostream* out;
  EnvLookup env;
  std::function<void(absl::Duration)> sleep;
  std::function<absl::Time()> now;
  ExportOptions export_options;
  bool is_terminal;  // Output goes to a terminal: `--watch` redraws the screen.
};

Env Resolve(const CommandEnvironment& e) {
  Env env;
  env.out = e.out != nullptr ? e.out : &std::cout;
  env.env = e.env ? e.env : ProcessEnvironment();
  env.sleep = e.sleep ? e.sleep : [](absl::Duration d) { absl::SleepFor(d); };
  env.now = e.now ? e.now : [] { return absl::Now(); };
  env.export_options = e.export_options;
  env.is_terminal = e.out == nullptr && ::isatty(STDOUT_FILENO) == 1;
  return env;
}

cli::FlagSpec Flag(std::string name, std::string help, std::string metavar = "VALUE", bool required = false,
                   std::optional<std::string> default_value = std::nullopt) {
  cli::FlagSpec flag;
  flag.name = std::move(name);
  flag.help = std::move(help);
  flag.metavar = std::move(metavar);
  flag.required = required;
  flag.value = std::move(default_value);
  return flag;
}

cli::FlagSpec BoolFlag(std::string name, std::string help) {
  cli::FlagSpec flag;
  flag.name = std::move(name);
  flag.help = std::move(help);
  flag.is_bool = true;
  return flag;
}

// A command with the connection flags plus `flags`; `run` gets a connected client.
using ClientRun = std::function<absl::Status(const cli::ParsedFlags&, AdminClient&, const Env&)>;

cli::Command AdminCommand(std::vector<std::string> path, std::string summary, std::string usage_tail,
                          int max_positional, std::vector<cli::FlagSpec> flags, const CommandEnvironment& environment,
                          ClientRun run) {
  cli::Command command;
  command.path = std::move(path);
  command.summary = std::move(summary);
  command.usage_tail = std::move(usage_tail);
  command.max_positional = max_positional;
  command.flags = std::move(flags);
  for (cli::FlagSpec& flag : ConnectionFlags()) command.flags.push_back(std::move(flag));
  const Env env = Resolve(environment);
  command.run = [env, run = std::move(run)](const cli::ParsedFlags& flags) -> absl::Status {
    ASSIGN_OR_RETURN(ConnectionSettings settings, ResolveConnection(flags, env.env));
    ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> client, AdminClient::Connect(settings));
    return run(flags, *client, env);
  };
  return command;
}

absl::StatusOr<std::string> OnePositional(const cli::ParsedFlags& flags, const char* what) {
  if (flags.positional().size() != 1 || flags.positional()[0].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("expected exactly one ", what));
  }
  return flags.positional()[0];
}

std::string DatasetText(const v1::DatasetSummary& d) {
  if (d.images() == 0 && d.train_images() == 0 && d.test_images() == 0) return "-";
  return absl::StrCat("train ", d.train_images(), ", val ", d.validation_images(), ", test ", d.test_images(), "; ",
                      d.studies(), " studies, ", d.patients(), " patients");
}

int64_t NowMs(const Env& env) { return absl::ToUnixMillis(env.now()); }

std::string SiteLine(const v1::SiteInfo& site) {
  const std::string status = federation::DisplayText(site);
  std::string line =
      absl::StrCat("site ", TerminalSafe(site.site_id()), ": ", status.empty() ? "unknown" : TerminalSafe(status),
                   site.certificate_serial().empty()
                       ? ""
                       : absl::StrCat(" (certificate serial ", TerminalSafe(site.certificate_serial()), ")"));
  if (!site.key_sha256().empty()) absl::StrAppend(&line, "\n  pinned key sha256 ", TerminalSafe(site.key_sha256()));
  if (!site.offered_key_sha256().empty()) {
    absl::StrAppend(&line, "\n  refused new key sha256 ", TerminalSafe(site.offered_key_sha256()),
                    " (certificate serial ", TerminalSafe(site.offered_serial()),
                    "): accept it with `fedtune sites approve ", TerminalSafe(site.site_id()), " --replace-key`");
  }
  return line;
}

// The key column of `sites list`: the first 16 hex digits of the pinned key, and of a refused offered one.
std::string KeyCell(const v1::SiteInfo& site) {
  std::string cell = site.key_sha256().empty() ? "-" : site.key_sha256().substr(0, 16);
  if (!site.offered_key_sha256().empty()) {
    absl::StrAppend(&cell, " (refused new key ", site.offered_key_sha256().substr(0, 16), ")");
  }
  return cell;
}

// Bounds of a failure report's text on the terminal: the protocol's (federation.proto FailureReport).
constexpr size_t kFailureMessageBytes = 2048;
constexpr size_t kFailureLogLineBytes = 512;

// True when the site's latest failure came after its last success (`last_success`: SitesTableText's): it has not
// recovered yet.
bool FailingNow(const v1::SiteInfo& site, const std::map<std::string, int64_t>& last_success) {
  if (!site.has_last_failure()) return false;
  auto it = last_success.find(site.site_id());
  return it == last_success.end() || site.last_failure().received_ms() > it->second;
}

// "training INVALID_ARGUMENT" (the class, or the code when the site sent no class).
std::string FailureWhat(const v1::FailureReport& r) {
  return absl::StrCat(federation::FailureStageText(r.stage()), " ",
                      r.error_class().empty() ? absl::StrCat("code ", r.status_code()) : r.error_class());
}

// "run-0001 round 2 attempt 1 (TRAIN)", or "no run" for a failure not tied to a task.
std::string FailureTask(const v1::FailureReport& r) {
  if (r.run_id().empty()) return "no run";
  return absl::StrCat(r.run_id(), " round ", r.round(), " attempt ", r.attempt(),
                      v1::Task::Kind_IsValid(r.task_kind())
                          ? absl::StrCat(" (", v1::Task::Kind_Name(static_cast<v1::Task::Kind>(r.task_kind())), ")")
                          : "");
}

// The "last failure" cell of `sites list`: "! training INVALID_ARGUMENT 2m ago", the "!" when the site has not
// succeeded since.
std::string LastFailureCell(const v1::SiteInfo& site, int64_t now_ms,
                            const std::map<std::string, int64_t>& last_success) {
  if (!site.has_last_failure()) return "-";
  return absl::StrCat(FailingNow(site, last_success) ? "! " : "", FailureWhat(site.last_failure().report()), " ",
                      FormatAgo(site.last_failure().received_ms(), now_ms));
}

// One failure report of `sites show`, every site string through TerminalSafe.
std::string FailureText(const v1::SiteFailure& failure, int64_t now_ms) {
  const v1::FailureReport& r = failure.report();
  std::string out = absl::StrCat(FormatTimeMs(failure.received_ms()), " (", FormatAgo(failure.received_ms(), now_ms),
                                 ")  ", TerminalSafe(FailureTask(r)), "\n");
  absl::StrAppend(&out, "  stage    ", federation::FailureStageText(r.stage()), "\n");
  absl::StrAppend(&out, "  error    ", r.error_class().empty() ? "-" : TerminalSafe(r.error_class()), " (code ",
                  r.status_code(), ")", r.will_retry() ? "; the site retries the task itself" : "", "\n");
  absl::StrAppend(&out, "  message  ", r.message().empty() ? "-" : TerminalSafe(r.message(), kFailureMessageBytes),
                  "\n");
  if (r.failed_ms() > 0) absl::StrAppend(&out, "  at site  ", FormatTimeMs(r.failed_ms()), " (the site's clock)\n");
  if (r.log_lines_size() == 0) {
    absl::StrAppend(&out, "  log      none shared (the site's share_diagnostics is off, or it had none)\n");
  } else {
    absl::StrAppend(&out, "  log      last ", r.log_lines_size(), " line(s) before the failure:\n");
    for (const std::string& line : r.log_lines()) {
      // A log message of several lines (a table the agent logged) is shown as its lines, each escaped.
      for (absl::string_view part : absl::StrSplit(absl::StripTrailingAsciiWhitespace(line), '\n')) {
        absl::StrAppend(&out, "    | ", TerminalSafe(part, kFailureLogLineBytes), "\n");
      }
    }
  }
  return out;
}

}  // namespace

std::string SiteDetailText(const v1::SiteResponse& response, int64_t now_ms) {
  const v1::SiteInfo& site = response.site();
  std::string out = absl::StrCat(SiteLine(site), "\n");
  auto field = [&out](absl::string_view name, const std::string& value) {
    absl::StrAppend(&out, "  ", name, std::string(14 - std::min<size_t>(13, name.size()), ' '), value, "\n");
  };
  field("first seen", FormatTimeMs(site.first_seen_ms()));
  field("last seen", site.last_seen_ms() > 0 ? absl::StrCat(FormatAgo(site.last_seen_ms(), now_ms), " (",
                                                            FormatTimeMs(site.last_seen_ms()), ")")
                                             : "never");
  field("state", site.state().empty() ? "-" : TerminalSafe(site.state()));
  field("dataset", site.dataset().images() == 0 && site.dataset().train_images() == 0
                       ? "-"
                       : absl::StrCat(site.dataset().images(), " images: ", DatasetText(site.dataset())));
  const v1::Capabilities& c = site.capabilities();
  field("agent",
        c.agent_version().empty() && c.device().empty()
            ? "-"
            : absl::StrCat(c.agent_version().empty() ? "?" : TerminalSafe(c.agent_version()), " on ",
                           c.device().empty() ? "?" : TerminalSafe(c.device()), ", ", c.threads(), " thread(s)"));
  if (response.failures_size() == 0) {
    absl::StrAppend(&out, "\nNo failure reports.\n");
    return out;
  }
  absl::StrAppend(&out, "\nFailure reports (", response.failures_size(), ", most recent first):\n");
  for (const v1::SiteFailure& failure : response.failures()) absl::StrAppend(&out, "\n", FailureText(failure, now_ms));
  return out;
}

std::map<std::string, int64_t> LastAcceptedUpdates(const v1::RunStatus& status) {
  std::map<std::string, int64_t> out;
  for (const v1::RoundInfo& r : status.rounds()) {
    for (const v1::UpdateInfo& u : r.updates()) {
      if (!federation::IsAccepted(u)) continue;
      int64_t& latest = out[u.site_id()];
      latest = std::max(latest, u.received_ms());
    }
  }
  return out;
}

std::string SitesTableText(const v1::ListSitesResponse& sites, int64_t now_ms,
                           const std::map<std::string, int64_t>& last_success) {
  if (sites.sites_size() == 0) return "No site has contacted the coordinator yet.\n";
  TextTable table({"site", "status", "last seen", "images", "dataset", "state", "key sha256", "last failure"},
                  {false, false, false, true});
  bool failing = false;
  for (const v1::SiteInfo& s : sites.sites()) {
    table.AddRow({s.site_id(), federation::DisplayText(s), FormatAgo(s.last_seen_ms(), now_ms),
                  absl::StrCat(s.dataset().images()), DatasetText(s.dataset()), s.state().empty() ? "-" : s.state(),
                  KeyCell(s), LastFailureCell(s, now_ms, last_success)});
    failing = failing || FailingNow(s, last_success);
  }
  std::string out = table.Render();
  if (failing) {
    absl::StrAppend(&out,
                    "\n! the site's latest failure is newer than its last accepted update in the latest run: "
                    "`fedtune sites show ID` has the reports\n");
  }
  return out;
}

std::string RunListText(const v1::ListRunsResponse& runs) {
  if (runs.runs_size() == 0) return "No run yet.\n";
  TextTable table({"run", "name", "state", "round", "started", "finished", "down", "up"},
                  {false, false, false, true, false, false, true, true});
  for (const v1::RunStatus& r : runs.runs()) {
    table.AddRow({r.run_id(), r.name().empty() ? "-" : r.name(), federation::DisplayText(r),
                  absl::StrCat(r.current_round(), "/", r.config().rounds()), FormatTimeMs(r.started_ms()),
                  FormatTimeMs(r.finished_ms()), FormatBytes(r.bytes_down()), FormatBytes(r.bytes_up())});
  }
  return table.Render();
}

std::string RunStatusText(const v1::RunStatus& status, int64_t now_ms) {
  std::string out;
  std::set<int> closed;
  for (const v1::RoundInfo& r : status.rounds()) {
    const absl::StatusOr<federation::RoundState> state = federation::GetState(r);
    if (state.ok() && *state == federation::RoundState::kClosed) closed.insert(r.round());
  }
  const int planned = status.config().rounds();
  const double progress = planned > 0 ? static_cast<double>(closed.size()) / planned : 0;
  // Every string of the answer may carry site text (states, messages): printed through TerminalSafe only.
  absl::StrAppend(&out, "Run ", TerminalSafe(status.run_id()),
                  status.name().empty() ? "" : absl::StrCat(" \"", TerminalSafe(status.name()), "\""), ": ",
                  TerminalSafe(federation::DisplayText(status)), ", round ", status.current_round(), " of ", planned,
                  ", ", absl::StrFormat("%.0f%%", 100 * progress), " of the rounds done\n");
  if (!status.message().empty()) absl::StrAppend(&out, "  ", TerminalSafe(status.message()), "\n");
  absl::StrAppend(&out, "  started ", FormatTimeMs(status.started_ms()),
                  status.finished_ms() > 0 ? absl::StrCat(", finished ", FormatTimeMs(status.finished_ms())) : "",
                  "\n  aggregation ", TerminalSafe(status.config().aggregation()), ", compression ",
                  TerminalSafe(status.config().compression()), ", base model ",
                  TerminalSafe(ShortDigest(status.base_model_digest())), ", final model ",
                  TerminalSafe(ShortDigest(status.final_model_digest())), "\n  traffic ",
                  FormatBytes(status.bytes_down()), " down, ", FormatBytes(status.bytes_up()), " up\n");
  if (status.rounds_size() > 0) {
    TextTable rounds({"round", "attempt", "state", "updates", "refused", "samples", "mean loss", "bytes up", "model",
                      "result", "note"},
                     {true, true, false, true, true, true, true, true});
    for (const v1::RoundInfo& r : status.rounds()) {
      int accepted = 0, refused = 0;
      int64_t samples = 0, bytes = 0;
      double loss = 0;
      int n_loss = 0;
      std::vector<std::string> declined;  // Sites that declined the round (DeclineTask): shown in the note.
      for (const v1::UpdateInfo& u : r.updates()) {
        bytes += u.bytes();
        absl::StatusOr<federation::UploadStatus> st = federation::GetStatus(u);
        if (st.ok() && *st == federation::UploadStatus::kDeclined) {
          declined.push_back(TerminalSafe(u.site_id()));
          continue;
        }
        if (!federation::IsAccepted(u)) {
          ++refused;
          continue;
        }
        ++accepted;
        samples += u.num_samples();
        if (Defined(u.train_loss()) && u.train_loss() > 0) {
          loss += u.train_loss();
          ++n_loss;
        }
      }
      rounds.AddRow({absl::StrCat(r.round()), absl::StrCat(r.attempt()), federation::DisplayText(r),
                     absl::StrCat(accepted), absl::StrCat(refused), absl::StrCat(samples),
                     FormatLoss(n_loss > 0 ? std::optional<double>(loss / n_loss) : std::nullopt), FormatBytes(bytes),
                     ShortDigest(r.model_digest()), ShortDigest(r.result_digest()),
                     declined.empty() ? r.message()
                                      : absl::StrCat(r.message(), r.message().empty() ? "" : "; ",
                                                     "declined: ", absl::StrJoin(declined, ", "))});
    }
    absl::StrAppend(&out, "\n", rounds.Render());
  }
  if (status.sites_size() > 0) {
    TextTable sites({"site", "state", "progress", "train loss", "last seen", "down", "up"},
                    {false, false, true, true, false, true, true});
    for (const v1::SiteRunState& s : status.sites()) {
      sites.AddRow({s.site_id(), s.state(), absl::StrFormat("%.0f%%", 100 * s.progress()),
                    FormatLoss(s.train_loss() > 0 ? Defined(s.train_loss()) : std::nullopt),
                    FormatAgo(s.last_seen_ms(), now_ms), FormatBytes(s.bytes_down()), FormatBytes(s.bytes_up())});
    }
    absl::StrAppend(&out, "\n", sites.Render());
    // Each site's latest failure report of this run (the full reports: `fedtune sites show ID`).
    std::string failures;
    for (const v1::SiteRunState& s : status.sites()) {
      if (!s.has_last_failure()) continue;
      const v1::FailureReport& r = s.last_failure().report();
      absl::StrAppend(&failures, "  ", TerminalSafe(s.site_id()), ": round ", r.round(), " attempt ", r.attempt(), ", ",
                      federation::FailureStageText(r.stage()), ", ",
                      r.error_class().empty() ? absl::StrCat("code ", r.status_code()) : TerminalSafe(r.error_class()),
                      ", ", FormatAgo(s.last_failure().received_ms(), now_ms), ": ",
                      r.message().empty() ? "(no message)" : TerminalSafe(r.message()), "\n");
    }
    if (!failures.empty()) {
      absl::StrAppend(&out, "\nLatest failure per site in this run (`fedtune sites show ID` for the reports):\n",
                      failures);
    }
  }
  return out;
}

cli::Command MakeSitesListCommand(CommandEnvironment environment) {
  return AdminCommand({"sites", "list"}, "list the sites known to the coordinator", "", 0, {}, environment,
                      [](const cli::ParsedFlags&, AdminClient& client, const Env& env) -> absl::Status {
                        ASSIGN_OR_RETURN(v1::ListSitesResponse sites, client.ListSites());
                        // A site's last success: its latest accepted update in the latest run (none before a run).
                        std::map<std::string, int64_t> last_success;
                        absl::StatusOr<v1::RunStatus> latest = client.GetRunStatus("");
                        if (latest.ok()) {
                          last_success = LastAcceptedUpdates(*latest);
                        } else if (!absl::IsNotFound(latest.status())) {
                          return latest.status();
                        }
                        *env.out << SitesTableText(sites, NowMs(env), last_success) << std::flush;
                        return absl::OkStatus();
                      });
}

cli::Command MakeSitesShowCommand(CommandEnvironment environment) {
  return AdminCommand({"sites", "show"}, "show one site: registry entry, dataset, agent and its failure reports", "ID",
                      1, {}, environment,
                      [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
                        ASSIGN_OR_RETURN(std::string id, OnePositional(flags, "site id"));
                        ASSIGN_OR_RETURN(v1::SiteResponse site, client.GetSite(id));
                        *env.out << SiteDetailText(site, NowMs(env)) << std::flush;
                        return absl::OkStatus();
                      });
}

cli::Command MakeSitesApproveCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"sites", "approve"}, "let a pending site take part in runs (--replace-key: accept its new certificate's key)",
      "ID", 1,
      {BoolFlag("replace-key",
                "also accept the new key the site was refused for (it re-keyed) as the key its registry entry pins"),
       Flag("key-sha256",
            "with --replace-key: refuse unless the new key's sha256 starts with this (from `fedtune pki sign`)",
            "HEX")},
      environment, [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        ASSIGN_OR_RETURN(std::string id, OnePositional(flags, "site id"));
        const bool replace_key = flags.GetBool("replace-key");
        const std::string expected = flags.Get("key-sha256").value_or("");
        if (!expected.empty() && !replace_key) {
          return absl::InvalidArgumentError("--key-sha256 goes with --replace-key");
        }
        ASSIGN_OR_RETURN(v1::SiteInfo site, client.ApproveSite(id, replace_key, expected));
        *env.out << SiteLine(site) << "\n" << std::flush;
        return absl::OkStatus();
      });
}

cli::Command MakeSitesRevokeCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"sites", "revoke"}, "refuse a site from its next call (and with --ca-dir revoke its certificates)", "ID", 1,
      {Flag("reason", "why, recorded with the revocation", "TEXT"),
       Flag("ca-dir", "the consortium CA directory: also revoke the site's certificates there and re-issue the CRL",
            "DIR")},
      environment, [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        ASSIGN_OR_RETURN(std::string id, OnePositional(flags, "site id"));
        const std::string reason = flags.Get("reason").value_or("");
        if (std::optional<std::string> ca_dir = flags.Get("ca-dir")) {
          // The CA first: once the CRL lists the certificate, every verifier (the coordinator's included) refuses it,
          // even if the coordinator cannot be reached now.
          ASSIGN_OR_RETURN(std::unique_ptr<pki::CertificateAuthority> ca, pki::CertificateAuthority::Open(*ca_dir));
          absl::StatusOr<std::vector<pki::IndexEntry>> revoked = ca->RevokeByName(id, pki::Role::kSite, reason);
          if (revoked.ok()) {
            std::vector<std::string> serials;
            for (const pki::IndexEntry& e : *revoked) serials.push_back(e.serial);
            *env.out << "revoked certificate serial(s) " << absl::StrJoin(serials, ", ") << " of site " << id << " in "
                     << *ca_dir << "; CRL re-issued (" << pki::CaCrlPath(*ca_dir) << ")\n";
          } else if (absl::IsNotFound(revoked.status())) {
            RETURN_IF_ERROR(ca->ReissueCrl());
            *env.out << "site " << id << " has no valid certificate in " << *ca_dir << "; CRL re-issued\n";
          } else {
            return revoked.status();
          }
        }
        ASSIGN_OR_RETURN(v1::SiteInfo site, client.RevokeSite(id, reason));
        *env.out << SiteLine(site) << "\n" << std::flush;
        return absl::OkStatus();
      });
}

cli::Command MakeRunStartCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"run", "start"}, "start a federated run from a RunConfig text proto", "", 0,
      {Flag("config", "RunConfig text proto (federation_config.proto)", "run.textproto", true)}, environment,
      [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        ASSIGN_OR_RETURN(v1::RunConfig config, ReadRunConfig(flags.GetOrDie("config")));
        absl::Status valid = ValidateRunConfig(config);
        if (!valid.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(flags.GetOrDie("config"), ": ", valid.message()));
        }
        ASSIGN_OR_RETURN(std::string run_id, client.StartRun(config));
        *env.out << TerminalSafe(run_id) << "\n" << std::flush;
        return absl::OkStatus();
      });
}

cli::Command MakeRunStatusCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"run", "status"}, "show a run's rounds, sites, progress and traffic", "", 0,
      {Flag("run", "run id; default: the latest run", "RUN"),
       BoolFlag("watch", "refresh until the run ends; exit 0 if it completed, 1 if it failed or was aborted"),
       Flag("interval", "seconds between refreshes with --watch", "SECONDS", false, "2")},
      environment, [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        std::string run_id = flags.Get("run").value_or("");
        ASSIGN_OR_RETURN(double interval, flags.GetDouble("interval", 2));
        if (!(interval >= 0) || interval > 3600) {
          return absl::InvalidArgumentError(
              absl::StrCat("--interval is ", interval, ": must be between 0 and 3600 seconds"));
        }
        const bool watch = flags.GetBool("watch");
        int failures = 0;
        while (true) {
          absl::StatusOr<v1::RunStatus> status = client.GetRunStatus(run_id);
          if (!status.ok()) {
            const bool transient = absl::IsUnavailable(status.status()) || absl::IsDeadlineExceeded(status.status());
            if (!watch || !transient || ++failures >= kMaxWatchFailures) return status.status();
            *env.out << "(" << TerminalSafe(status.status().message()) << "; retrying)\n" << std::flush;
            env.sleep(absl::Seconds(interval));
            continue;
          }
          failures = 0;
          // Follow the run the first answer named, even if another starts meanwhile.
          if (run_id.empty()) run_id = status->run_id();
          if (watch && env.is_terminal) *env.out << "\x1b[H\x1b[2J";
          *env.out << RunStatusText(*status, NowMs(env)) << std::flush;
          if (!watch) return absl::OkStatus();
          ASSIGN_OR_RETURN(const federation::RunState state, federation::GetState(*status));
          if (federation::IsFinal(state)) {
            if (state == federation::RunState::kCompleted) return absl::OkStatus();
            return absl::AbortedError(absl::StrCat("run ", status->run_id(), " ", federation::Text(state),
                                                   status->message().empty() ? "" : ": ", status->message()));
          }
          *env.out << "\n";
          env.sleep(absl::Seconds(interval));
        }
      });
}

cli::Command MakeRunAbortCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"run", "abort"}, "abort a run (sites are told to stop at their next heartbeat)", "", 0,
      {Flag("run", "run id; default: the latest run", "RUN"), Flag("reason", "why, recorded with the run", "TEXT")},
      environment, [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        ASSIGN_OR_RETURN(v1::RunStatus status,
                         client.AbortRun(flags.Get("run").value_or(""), flags.Get("reason").value_or("")));
        *env.out << "run " << TerminalSafe(status.run_id()) << ": " << TerminalSafe(federation::DisplayText(status))
                 << (status.message().empty() ? "" : " (" + TerminalSafe(status.message()) + ")") << "\n"
                 << std::flush;
        return absl::OkStatus();
      });
}

cli::Command MakeRunListCommand(CommandEnvironment environment) {
  return AdminCommand({"run", "list"}, "list the most recent runs, newest first", "", 0,
                      {Flag("limit", "how many runs (at most 1000)", "N", false, "20")}, environment,
                      [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
                        ASSIGN_OR_RETURN(double limit, flags.GetDouble("limit", 20));
                        if (!(limit >= 1) || limit > 1000 || limit != static_cast<int>(limit)) {
                          return absl::InvalidArgumentError(
                              absl::StrCat("--limit is ", limit, ": must be a whole number from 1 to 1000"));
                        }
                        ASSIGN_OR_RETURN(v1::ListRunsResponse runs, client.ListRuns(static_cast<int>(limit)));
                        *env.out << RunListText(runs) << std::flush;
                        return absl::OkStatus();
                      });
}

cli::Command MakeModelExportCommand(CommandEnvironment environment) {
  return AdminCommand(
      {"model", "export"}, "download a model version (checkpoint file), resumable and verified", "", 0,
      {Flag("version", "the model version's digest (or a unique prefix of at least 8 hex digits)", "DIGEST", true),
       Flag("out", "where to write the checkpoint (atomically; OUT.part while downloading)", "FILE", true),
       Flag("stream-timeout", "deadline of one download stream", "SECONDS", false, "600")},
      environment, [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
        ExportOptions options = env.export_options;
        ASSIGN_OR_RETURN(double stream_timeout, flags.GetDouble("stream-timeout", 600));
        if (!(stream_timeout > 0)) {
          return absl::InvalidArgumentError(absl::StrCat("--stream-timeout is ", stream_timeout, ": must be > 0"));
        }
        options.stream_timeout = absl::Seconds(stream_timeout);
        ASSIGN_OR_RETURN(ExportResult result,
                         client.ExportModel(flags.GetOrDie("version"), flags.GetOrDie("out"), options));
        *env.out << "wrote " << result.path << " (" << FormatBytes(result.bytes) << ", sha256 "
                 << TerminalSafe(result.sha256)
                 << (result.attempts > 1 ? absl::StrCat(", ", result.attempts, " streams") : "") << ")\n"
                 << std::flush;
        return absl::OkStatus();
      });
}

cli::Command MakeReportCommand(CommandEnvironment environment) {
  return AdminCommand({"report"}, "write the consortium report of a run (report.json, report.html)", "", 0,
                      {Flag("run", "run id; default: the latest run", "RUN"),
                       Flag("out", "output directory (created if missing)", "DIR", true),
                       Flag("reference-run",
                            "another run (e.g. the same federation without privacy) whose mean AUCs are shown next "
                            "to this run's",
                            "RUN")},
                      environment,
                      [](const cli::ParsedFlags& flags, AdminClient& client, const Env& env) -> absl::Status {
                        ASSIGN_OR_RETURN(v1::RunReport report, client.GetRunReport(flags.Get("run").value_or("")));
                        std::optional<v1::RunReport> reference;
                        if (const auto id = flags.Get("reference-run"); id.has_value()) {
                          if (id->empty()) return absl::InvalidArgumentError("--reference-run: empty run id");
                          ASSIGN_OR_RETURN(reference, client.GetRunReport(*id));
                        }
                        const v1::RunReport* ref = reference ? &*reference : nullptr;
                        ASSIGN_OR_RETURN(ReportFiles files, WriteConsortiumReport(report, flags.GetOrDie("out"), ref));
                        *env.out << SiteSummaryText(report, ref) << "\nreport: " << files.html_path << "\n        "
                                 << files.json_path << "\n"
                                 << std::flush;
                        return absl::OkStatus();
                      });
}

std::vector<cli::Command> MakeAdminCommands(const CommandEnvironment& environment) {
  return {MakeSitesListCommand(environment),   MakeSitesShowCommand(environment), MakeSitesApproveCommand(environment),
          MakeSitesRevokeCommand(environment), MakeRunStartCommand(environment),  MakeRunStatusCommand(environment),
          MakeRunAbortCommand(environment),    MakeRunListCommand(environment),   MakeModelExportCommand(environment),
          MakeReportCommand(environment)};
}

}  // namespace fedtune::admin
