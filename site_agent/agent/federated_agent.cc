#include "site_agent/agent/federated_agent.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"
#include "common/fl/residual_files.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/metrics/metrics_server.h"
#include "common/model/checkpoint.h"
#include "common/pki/certificate.h"
#include "common/status_macros.h"
#include "common/train/finetune_config.h"
#include "common/train/finetune_pipeline.h"
#include "common/train/site_data.h"
#include "common/train/threads.h"
#include "common/train/trainer.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/agent/cross_evaluation.h"
#include "site_agent/agent/dataset_summary.h"
#include "site_agent/agent/evaluation_options.h"
#include "site_agent/agent/failure_report.h"
#include "site_agent/agent/heartbeater.h"
#include "site_agent/agent/local_baseline.h"
#include "site_agent/agent/metrics_report.h"
#include "site_agent/agent/personalization.h"
#include "site_agent/agent/secure_aggregation.h"
#include "site_agent/agent/site_metrics.h"
#include "site_agent/agent/training_progress.h"
#include "site_agent/commands/evaluate.h"
#include "site_agent/commands/site_database.h"

namespace fedtune::agent {
namespace {

// Seconds per step of a TRAIN task, in order ("download 1.2 s, load 0.3 s, ...").
class RoundTimer {
 public:
  void Lap(const char* step) {
    const absl::Time now = absl::Now();
    absl::StrAppend(&text_, text_.empty() ? "" : ", ", step, " ",
                    absl::StrFormat("%.3f", absl::ToDoubleSeconds(now - last_)), " s");
    last_ = now;
  }
  const std::string& Describe() const { return text_; }

 private:
  absl::Time last_ = absl::Now();
  std::string text_;
};

namespace fs = std::filesystem;

bool IsAuthError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnauthenticated || status.code() == absl::StatusCode::kPermissionDenied;
}

// The deadline of the heartbeats sent outside a task while a call is retried (RetryReporter).
constexpr absl::Duration kIdleHeartbeatTimeout = absl::Seconds(5);

ClientOptions ClientOptionsFor(const v1::SiteAgentConfig& config, const AgentOptions& options) {
  ClientOptions client;
  client.address = config.coordinator();
  client.tls = {config.site_cert(), config.site_key(), config.ca_cert()};
  client.server_name = config.server_name();
  if (config.has_proxy()) client.proxy = config.proxy();
  client.keepalive = absl::Seconds(config.keepalive_seconds());
  client.keepalive_timeout = absl::Seconds(config.keepalive_timeout_seconds());
  client.rpc_timeout = absl::Seconds(config.rpc_timeout_seconds());
  client.min_transfer_bytes_per_second = 1024.0 * config.min_transfer_kib_per_second();
  client.retry.min_backoff = absl::Milliseconds(config.min_backoff_ms());
  client.retry.max_backoff = absl::Milliseconds(config.max_backoff_ms());
  client.retry.max_elapsed = absl::Seconds(config.retry_give_up_seconds());
  client.retry.max_attempts =
      options.max_attempts_per_call > 0 ? options.max_attempts_per_call : std::numeric_limits<int>::max();
  client.sleep = options.sleep;
  return client;
}

// The site's data cannot be read at start-up: a failure report without a run (stage TRAINING: reading the site's
// data), best effort, before the agent exits. Only the generic patterns are scrubbed (there are no manifest ids).
void ReportStartupFailure(const v1::SiteAgentConfig& config, const AgentOptions& options, const absl::Status& error) {
  absl::StatusOr<std::unique_ptr<CoordinatorClient>> client =
      CoordinatorClient::Create(ClientOptionsFor(config, options));
  if (!client.ok()) {
    LOG(WARNING) << "the failure to read the site's data cannot be reported: " << client.status();
    return;
  }
  const v1::FailureReport report = MakeFailureReport(
      v1::Task(), v1::FAILURE_STAGE_TRAINING, error, diagnostics::Scrubber(), config.share_diagnostics(),
      config.share_diagnostics() ? RecentLogLines() : std::vector<std::string>(), absl::Now());
  const absl::Status sent = (*client)->ReportFailure(report, options.failure_report_give_up);
  if (sent.ok()) {
    LOG(INFO) << "failure report sent to coordinator " << config.coordinator() << ": the site's data cannot be read ("
              << report.error_class() << ")";
  } else {
    LOG(WARNING) << "cannot send the failure report (the site's data cannot be read): " << sent;
  }
}

// Attaches a task's heartbeat to the RetryReporter while it lives (declared after the Heartbeater: detached first).
class AttachedHeartbeat {
 public:
  AttachedHeartbeat(RetryReporter* reporter, Heartbeater* heartbeat) : reporter_(reporter) {
    reporter_->Attach(heartbeat);
  }
  ~AttachedHeartbeat() { reporter_->Attach(nullptr); }
  AttachedHeartbeat(const AttachedHeartbeat&) = delete;
  AttachedHeartbeat& operator=(const AttachedHeartbeat&) = delete;

 private:
  RetryReporter* const reporter_;
};

// fedtune_site_tasks_total's labels (site_metrics.h); "" for an unknown kind (not counted as a task).
const char* TaskKindLabel(v1::Task::Kind kind) {
  switch (kind) {
    case v1::Task::TRAIN:
      return "train";
    case v1::Task::EVALUATE:
      return "evaluate";
    case v1::Task::CROSS_EVALUATE:
      return "cross_evaluate";
    default:
      return "";
  }
}

const char* TaskResultLabel(const absl::Status& status, const std::string& declined_reason) {
  if (status.ok()) return declined_reason.empty() ? "ok" : "declined";
  return status.code() == absl::StatusCode::kCancelled ? "cancelled" : "failed";
}

// The site's privacy account in its metrics: epsilon once the site accounts DP (a budget, or DP steps accounted).
void PublishPrivacy(const v1::PrivacyAccount& account, SiteMetrics* metrics) {
  metrics->SetPrivacy(account.max_epsilon() > 0 || account.private_steps() > 0, account.epsilon(),
                      account.max_epsilon());
}

}  // namespace

namespace {

absl::Status CheckCancelled(const Heartbeater& heartbeat, absl::string_view step, const v1::Task& task) {
  if (!heartbeat.cancelled()) return absl::OkStatus();
  return absl::CancelledError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": cancelled by the ",
                                           "coordinator before ", step, " (", heartbeat.reason(), ")"));
}

double MeanOf(const std::vector<double>& values) {
  if (values.empty()) return std::nan("");
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

// The sha256 of the update recorded for `key` when its file still has it; empty when there is none (or the file
// changed): then the update is encoded again.
absl::StatusOr<std::string> RecordedUpdateSha(AgentDatabase& db, const TaskKey& key) {
  ASSIGN_OR_RETURN(std::optional<TaskRecord> record, db.FindTask(key));
  if (!record || record->update_sha256.empty() || !fs::exists(record->update_path)) return std::string();
  ASSIGN_OR_RETURN(std::string on_disk, io::Sha256File(record->update_path));
  if (on_disk == record->update_sha256) return on_disk;
  LOG(WARNING) << record->update_path << " no longer has its recorded sha256: encoding the update again";
  return std::string();
}

// Secure aggregation takes the dense fp32 delta of every tensor: a lossy encoding (its error feedback keeps a
// residual the masks cannot carry) and FEDBN/SILOBN (tensors that stay at the site) are refused.
absl::Status CheckSecureAggregationPlan(const v1::Task& task, fl::Encoding encoding,
                                        v1::Personalization personalization) {
  if (encoding != fl::Encoding::kDenseFp32) {
    return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(),
                                                   ": secure aggregation needs the fp32 delta encoding, the plan says ",
                                                   fl::EncodingName(encoding)));
  }
  if (fl::KeepsTensorsLocal(personalization)) {
    return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(),
                                                   ": secure aggregation with personalization ",
                                                   federation::Text(personalization), " is not supported"));
  }
  return absl::OkStatus();
}

// One fine-tuning of a TRAIN task (the round's model, or Ditto's personal model) and its losses.
struct TunedModel {
  train::FinetuneResult result;
  double train_loss = 0;       // Mean over the members of their last epoch's training BCE.
  double validation_loss = 0;  // Mean over the members of their best validation BCE.
};

// Fine-tunes `base` into `out_dir` with the task's plan (local epochs, learning rate, batch size) and the proximal
// term `mu` (toward `anchor` when not empty, else toward `base`); progress goes to the heartbeat as `fraction_from` +
// `fraction_span` x the training's fraction. Resumes from out_dir's state after a restart (quick when it had
// finished), recorded in out_dir's site.db.
// Whether the round's losses may go to the coordinator: not in a DP round, nor at a site with a privacy budget (the
// losses are computed on the site's data outside the DP mechanisms and its ledger).
bool SendsLosses(const v1::SiteAgentConfig& config, const v1::Task& task) {
  const std::string& dp = task.plan().dp();
  return config.max_epsilon() <= 0 && (dp.empty() || dp == "none");
}

absl::StatusOr<TunedModel> FinetuneModel(const v1::SiteAgentConfig& config, const v1::Task& task, int networks,
                                         const std::string& base, const fs::path& out_dir, double mu,
                                         const std::string& anchor, Heartbeater& heartbeat, double fraction_from,
                                         double fraction_span) {
  TrainingValues values;
  values.local_epochs = std::max(1, task.plan().local_epochs());
  values.learning_rate =
      task.plan().learning_rate() > 0 ? task.plan().learning_rate() : config.finetune().learning_rate();
  values.batch_size = task.plan().batch_size() > 0 ? task.plan().batch_size() : config.finetune().batch_size();
  values.proximal_mu = mu;
  RETURN_IF_ERROR(SetPlanDp(task.plan(), &values));
  const v1::FinetuneConfig finetune = TaskFinetuneConfig(config, base, out_dir.string(), values);
  RETURN_IF_ERROR(train::ValidateFinetuneConfig(finetune));

  // Progress reaches the heartbeat through the pipeline's epoch callbacks. Shared with the heartbeat thread's probe,
  // which may still run after this function returns (until the next SetState).
  auto progress = std::make_shared<TrainingProgress>(networks, values.local_epochs);
  progress->PublishTo(heartbeat.metrics(), fraction_from, fraction_span);
  const bool sends_losses = SendsLosses(config, task);
  heartbeat.SetState(
      "training", fraction_from,
      [progress, fraction_from, fraction_span, sends_losses](std::string* state, double* fraction, double* train_loss) {
        const TrainingProgress::View view = progress->Describe();
        *state = view.state;
        *fraction = fraction_from + fraction_span * view.fraction;
        *train_loss = sends_losses ? view.train_loss : 0;
      });
  FinetuneRecorder recorder((out_dir / "site.db").string(), finetune);
  train::FinetuneObserver* observers[] = {&recorder, progress.get()};
  TunedModel out;
  ASSIGN_OR_RETURN(out.result, train::RunFinetune(finetune, observers, anchor));
  std::vector<double> train_losses;
  std::vector<double> validation_losses;
  for (const train::TrainResult& member : out.result.members) {
    if (!member.history.empty()) train_losses.push_back(member.history.back().train_loss);
    validation_losses.push_back(member.best_validation_loss);
  }
  out.train_loss = MeanOf(train_losses);
  out.validation_loss = MeanOf(validation_losses);
  return out;
}

}  // namespace

// One TRAIN task as it goes through RunTrain's steps: where its files are, the models, the fine-tuning's results.
struct FederatedAgent::TrainRound {
  const v1::Task& task;
  TaskKey key;
  fs::path run_dir;    // <work_dir>/runs/<run>
  fs::path round_dir;  // <run_dir>/round-<round>-<attempt>
  fl::Encoding encoding = fl::Encoding::kDenseFp32;
  v1::Personalization personalization = v1::PERSONALIZATION_NONE;
  std::string global_path;
  model::Checkpoint global;
  RoundStart start;  // What the round fine-tunes (the global model, with the site's kept tensors for FEDBN/SILOBN).
  train::FinetuneResult tuned;
  double train_loss = 0;       // Mean over the members of their last epoch's training BCE.
  double validation_loss = 0;  // Mean over the members of their best validation BCE.
  std::string update_path;
  std::string update_sha256;
  std::optional<TunedModel> personal;  // DITTO: this round's personal model.
  int64_t train_images = 0;            // Of the site's split: the privacy budget's N before training.
  RoundShape shape;                    // The networks trained on the site's data this round (the privacy budget's).
};

namespace {

// The DP-SGD mechanisms a fine-tuning ran (train::DpSgdPhases), network names prefixed with `prefix`.
void AddDpPhases(const train::FinetuneResult& result, const std::string& prefix, std::vector<NetworkPhase>* out) {
  for (const train::DpSgdPhase& p : train::DpSgdPhases(result)) {
    out->push_back(NetworkPhase{prefix + p.network, p.sample_rate, p.noise_multiplier, p.steps});
  }
}

// What differs between the plan (and model) of a TRAIN task stored for its key and a re-sent one, in words; "" when
// nothing the privacy accounting depends on differs.
std::string PlanDifference(const v1::Task& stored, const v1::Task& task) {
  const v1::TrainingPlan& a = stored.plan();
  const v1::TrainingPlan& b = task.plan();
  auto dp = [](const std::string& d) { return d.empty() ? std::string("none") : d; };
  std::string out;
  auto differ = [&out](const char* field, const auto& x, const auto& y) {
    if (!(x == y)) absl::StrAppend(&out, out.empty() ? "" : ", ", field, " ", x, " -> ", y);
  };
  differ("dp", dp(a.dp()), dp(b.dp()));
  differ("dp_noise_multiplier", a.dp_noise_multiplier(), b.dp_noise_multiplier());
  differ("dp_clip_norm", a.dp_clip_norm(), b.dp_clip_norm());
  differ("secure_aggregation", static_cast<int>(a.secure_aggregation()), static_cast<int>(b.secure_aggregation()));
  differ("local_epochs", a.local_epochs(), b.local_epochs());
  differ("batch_size", a.batch_size(), b.batch_size());
  differ("personalization", static_cast<int>(a.personalization()), static_cast<int>(b.personalization()));
  differ("model_digest", stored.model_digest(), task.model_digest());
  return out;
}

// The round dirs of a TRAIN task (personalization.h).
RoundDirs RoundDirsOf(const v1::Task& task, const fs::path& run_dir, const fs::path& round_dir) {
  RoundDirs dirs{run_dir.string(), round_dir.string(), {}};
  for (int a = task.attempt() - 1; a >= 0; --a) {
    dirs.earlier_attempts.push_back((run_dir / absl::StrCat("round-", task.round(), "-", a)).string());
  }
  return dirs;
}

}  // namespace

FederatedAgent::FederatedAgent(const v1::SiteAgentConfig& config, const AgentOptions& options)
    : config_(config), options_(options), heartbeat_period_(absl::Seconds(config.heartbeat_seconds())) {}

FederatedAgent::~FederatedAgent() = default;

absl::StatusOr<std::unique_ptr<FederatedAgent>> FederatedAgent::Create(const v1::SiteAgentConfig& config,
                                                                       const AgentOptions& options) {
  ASSIGN_OR_RETURN(pki::X509Ptr cert, pki::ReadCertificateFile(config.site_cert()));
  ASSIGN_OR_RETURN(pki::CertificateInfo info, pki::DescribeCertificate(cert.get()));
  if (info.common_name != config.site_id()) {
    return absl::InvalidArgumentError(absl::StrCat("config field 'site_id': \"", config.site_id(),
                                                   "\" is not the common name of site_cert ", config.site_cert(),
                                                   " (\"", info.common_name, "\")"));
  }
  if (info.role != pki::Role::kSite) {
    return absl::InvalidArgumentError(
        absl::StrCat("site_cert ", config.site_cert(), " is not a site certificate (subject ", info.subject, ")"));
  }
  if (info.not_after < absl::Now()) {
    return absl::FailedPreconditionError(absl::StrCat("site_cert ", config.site_cert(), " expired at ",
                                                      absl::FormatTime(info.not_after),
                                                      ": ask the operator to sign a new CSR"));
  }
  std::unique_ptr<FederatedAgent> agent(new FederatedAgent(config, options));
  // The log lines a failure report carries (FailureReport.log_lines); process-wide, kept from here on.
  if (config.share_diagnostics()) KeepRecentLogLines(kMaxFailureLogLines);
  SetLogSite(config.site_id());
  if (options.metrics == nullptr) agent->own_metrics_ = std::make_unique<SiteMetrics>();
  agent->metrics_ = options.metrics != nullptr ? options.metrics : agent->own_metrics_.get();

  // Capabilities: the device training will use.
  ASSIGN_OR_RETURN(c10::Device device, train::ResolveDevice(config.finetune().device()));
  v1::Capabilities* caps = agent->hello_.mutable_capabilities();
  caps->set_agent_version(kAgentVersion);
  caps->set_device(device.str());
  caps->set_threads(train::EffectiveThreads(config.finetune().threads()));
  fl::SetSupportedEncodings(caps);
  absl::StatusOr<train::SiteData> site = train::LoadSiteData(config.finetune());
  if (!site.ok()) {
    ReportStartupFailure(config, options, site.status());
    return site.status();
  }
  agent->site_ = *std::move(site);
  // The site's ids and paths: no failure report or heartbeat state names them.
  agent->scrubber_ = diagnostics::Scrubber(
      SiteIdentifiersOf(agent->site_.manifest, config.finetune().data_root(),
                        {config.finetune().data_root(), fs::path(config.finetune().manifest()).parent_path().string(),
                         config.work_dir()}));
  *agent->hello_.mutable_dataset() = SummarizeDataset(agent->site_);

  RETURN_IF_ERROR(io::MakeDirectories(config.work_dir()));
  ASSIGN_OR_RETURN(agent->db_, AgentDatabase::Open((fs::path(config.work_dir()) / "site.db").string()));
  agent->budget_ = std::make_unique<PrivacyBudget>(agent->db_.get(), config);
  // The budget as it stands, once at start-up. A corrupt ledger is said here already; the tasks that need it (every
  // TRAIN task, every report) then fail with the same error until it is repaired.
  if (absl::StatusOr<v1::PrivacyAccount> account = agent->budget_->Account(); account.ok()) {
    PublishPrivacy(*account, agent->metrics_);
    LOG(INFO) << "site " << config.site_id() << ": " << PrivacyLine(*account) << ", " << account->private_steps()
              << " private steps accounted" << (account->non_private_training() ? ", trained without DP before" : "");
  } else {
    LOG(ERROR) << "site " << config.site_id() << ": the privacy budget cannot be read: " << account.status();
  }

  ClientOptions client = ClientOptionsFor(config, options);
  client.metrics = agent->metrics_;
  ASSIGN_OR_RETURN(agent->client_, CoordinatorClient::Create(client));
  agent->retry_reporter_ =
      std::make_unique<RetryReporter>(agent->client_.get(), &agent->scrubber_, kIdleHeartbeatTimeout);
  agent->client_->set_retry_observer(agent->retry_reporter_.get());
  if (!config.metrics_listen_address().empty()) {
    ASSIGN_OR_RETURN(agent->metrics_server_,
                     metrics::MetricsServer::Start(config.metrics_listen_address(), agent->metrics_->registry(),
                                                   config.metrics_port_file()));
  }
  return agent;
}

int FederatedAgent::metrics_port() const { return metrics_server_ != nullptr ? metrics_server_->port() : 0; }

absl::Status FederatedAgent::SayHello() {
  metrics_->SetState(SiteState::kHello);
  RetryPolicy forever;
  forever.min_backoff = absl::Milliseconds(config_.min_backoff_ms());
  forever.max_backoff = absl::Milliseconds(config_.max_backoff_ms());
  forever.max_attempts = std::numeric_limits<int>::max();
  forever.max_elapsed = absl::InfiniteDuration();
  Backoff backoff(forever, options_.sleep, static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  while (true) {
    absl::StatusOr<v1::HelloResponse> response = client_->Hello(hello_);
    if (!response.ok()) {
      if (!IsRetryable(response.status())) {
        return absl::Status(
            response.status().code(),
            absl::StrCat(response.status().message(),
                         IsAuthError(response.status()) ? " (is this site enrolled and not revoked?)" : ""));
      }
      // CoordinatorClient::Hello told the RetryReporter about its retries already.
      LOG(WARNING) << response.status() << "; trying again in about " << backoff.NextDelay();
      metrics_->CountRetry("Hello");
      RETURN_IF_ERROR(backoff.Wait(response.status()));
      continue;
    }
    ASSIGN_OR_RETURN(const federation::SiteStatus status, federation::GetStatus(*response));
    if (status == federation::SiteStatus::kApproved) {
      if (!response->site_id().empty() && response->site_id() != config_.site_id()) {
        return absl::FailedPreconditionError(absl::StrCat("coordinator ", config_.coordinator(),
                                                          " knows this site as \"", response->site_id(),
                                                          "\", the config says \"", config_.site_id(), "\""));
      }
      if (response->heartbeat_seconds() > 0) {
        heartbeat_period_ = std::min(heartbeat_period_, absl::Seconds(response->heartbeat_seconds()));
      }
      if (response->chunk_bytes() > 0) client_->set_chunk_bytes(response->chunk_bytes());
      LOG(INFO) << "site " << config_.site_id() << " approved by coordinator " << config_.coordinator() << " ("
                << response->coordinator_version() << ")";
      metrics_->SetState(SiteState::kIdle);
      return absl::OkStatus();
    }
    if (status != federation::SiteStatus::kPending) {
      return absl::PermissionDeniedError(absl::StrCat("coordinator ", config_.coordinator(), " says site ",
                                                      config_.site_id(), " is \"", federation::Text(status), "\""));
    }
    LOG(WARNING) << "site " << config_.site_id() << " is waiting for approval at coordinator " << config_.coordinator()
                 << ": the operator runs `fedtune sites approve " << config_.site_id() << "`; asking again in about "
                 << backoff.NextDelay();
    RETURN_IF_ERROR(backoff.Wait(absl::UnavailableError("pending approval")));
  }
}

absl::Status FederatedAgent::FinishRun(const std::string& run_id, const std::string& how) {
  ASSIGN_OR_RETURN(bool first, db_->MarkRunFinished(run_id, how));
  if (first) {
    ++finished_runs_;
    LOG(INFO) << "run " << run_id << " finished for site " << config_.site_id() << " (" << how << "); "
              << finished_runs_ << " run(s) finished";
  }
  return absl::OkStatus();
}

absl::Status FederatedAgent::Run() {
  RETURN_IF_ERROR(SayHello());
  // Work an earlier agent left between its upload and its round report (see AgentDatabase::InterruptedTrainTasks).
  ASSIGN_OR_RETURN(std::vector<v1::Task> interrupted, db_->InterruptedTrainTasks());
  for (const v1::Task& task : interrupted) {
    LOG(INFO) << "completing run " << task.run_id() << " round " << task.round() << " attempt " << task.attempt()
              << ", interrupted after its update was written";
    const absl::Status status = RunTask(task);
    if (IsAuthError(status)) return status;
    if (!status.ok()) LOG(WARNING) << "run " << task.run_id() << " round " << task.round() << ": " << status;
  }
  RetryPolicy forever;
  forever.min_backoff = absl::Milliseconds(config_.min_backoff_ms());
  forever.max_backoff = absl::Milliseconds(config_.max_backoff_ms());
  forever.max_attempts = std::numeric_limits<int>::max();
  forever.max_elapsed = absl::InfiniteDuration();
  // Its waits (after a failed GetTask or task) show the state "retrying".
  Backoff backoff(forever, RetrySleep(metrics_, "", options_.sleep),
                  static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) + 1);
  const int exit_after = config_.exit_after_runs();
  bool polls_failing = false;  // GetTask failed: the heartbeats say "retrying: task poll: ..." until it works again.
  while (exit_after == 0 || finished_runs_ < exit_after) {
    absl::StatusOr<v1::Task> task = client_->GetTask(options_.task_wait_seconds);
    if (task.ok() && polls_failing) {
      polls_failing = false;
      retry_reporter_->OnRetryEnd("GetTask");
    }
    if (!task.ok()) {
      if (IsAuthError(task.status())) return task.status();
      metrics_->CountRetry("GetTask");
      if (task.status().code() == absl::StatusCode::kFailedPrecondition) {
        // E.g. a coordinator that lost this site's session: introduce the site again.
        LOG(WARNING) << task.status() << "; saying Hello again";
        RETURN_IF_ERROR(SayHello());
      }
      LOG(WARNING) << task.status() << "; polling again in about " << backoff.NextDelay();
      polls_failing = true;
      retry_reporter_->OnRetry("GetTask", task.status(), backoff.NextDelay());
      RETURN_IF_ERROR(backoff.Wait(task.status()));
      continue;
    }
    for (const std::string& run_id : task->ended_runs()) {
      ASSIGN_OR_RETURN(bool took_part, db_->TookPart(run_id));
      if (took_part) RETURN_IF_ERROR(FinishRun(run_id, "ended"));
    }
    if (task->kind() == v1::Task::NONE) {
      backoff.Reset();
      continue;
    }
    const absl::Status status = RunTask(*task);
    if (status.ok()) {
      backoff.Reset();
      continue;
    }
    if (IsAuthError(status)) return status;
    const std::string what = absl::StrCat("task ", v1::Task::Kind_Name(task->kind()), " of run ", task->run_id(),
                                          " round ", task->round(), " attempt ", task->attempt());
    if (status.code() == absl::StatusCode::kCancelled) {
      LOG(WARNING) << what << " cancelled: " << status;
    } else {
      LOG(ERROR) << what << " failed: " << status;
    }
    RETURN_IF_ERROR(backoff.Wait(status));
  }
  LOG(INFO) << "site " << config_.site_id() << ": " << finished_runs_ << " run(s) finished; exiting";
  return absl::OkStatus();
}

absl::Status FederatedAgent::RunTask(const v1::Task& task) {
  // Every log line of the task (its failure report's included) carries its run and round, and the metrics say what
  // it is doing and how it ended.
  const int round = task.kind() == v1::Task::TRAIN ? task.round() : 0;
  SetLogRun(task.run_id(), round);
  metrics_->SetRound(round);
  failure_stage_ = v1::FAILURE_STAGE_OTHER;
  const absl::Status status = SiteDataError(WorkTask(task));
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled) ReportFailure(task, status);
  metrics_->TaskEnded(TaskKindLabel(task.kind()), TaskResultLabel(status, declined_reason_), status);
  metrics_->SetState(SiteState::kIdle);
  metrics_->SetRound(0);
  metrics_->SetProgress(0);
  SetLogRun("", 0);
  return status;
}

void FederatedAgent::ReportFailure(const v1::Task& task, const absl::Status& error) {
  const v1::FailureReport report =
      MakeFailureReport(task, failure_stage_, error, scrubber_, config_.share_diagnostics(),
                        config_.share_diagnostics() ? RecentLogLines() : std::vector<std::string>(), absl::Now());
  // A task the coordinator offers again and that fails again the same way (unreadable images) is reported once.
  const std::string key = FailureReportKey(report);
  const std::string what = absl::StrCat("the failure report of task ", v1::Task::Kind_Name(task.kind()), " of run ",
                                        task.run_id(), " round ", task.round(), " attempt ", task.attempt(), " (stage ",
                                        StageName(report.stage()), ", ", report.error_class(), ")");
  if (key == reported_failure_) {
    LOG(INFO) << what << " was sent before";
    return;
  }
  const absl::Status sent = client_->ReportFailure(report, options_.failure_report_give_up);
  if (!sent.ok()) {
    LOG(WARNING) << "cannot send " << what << ": " << sent;
    return;
  }
  reported_failure_ = key;
  LOG(INFO) << what << " sent to coordinator " << config_.coordinator()
            << (report.log_lines_size() > 0 ? absl::StrCat(" with ", report.log_lines_size(), " scrubbed log lines")
                                            : std::string());
}

absl::Status FederatedAgent::WorkTask(const v1::Task& task) {
  const bool train = task.kind() == v1::Task::TRAIN;
  const bool cross = task.kind() == v1::Task::CROSS_EVALUATE;
  if (!train && !cross && task.kind() != v1::Task::EVALUATE) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task.kind()));
  }
  if (task.run_id().empty() || task.run_id().find('/') != std::string::npos ||
      task.run_id().find("..") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("task with an unusable run id \"", task.run_id(), "\""));
  }
  const TaskKey key{task.run_id(), train ? task.round() : 0, task.attempt(),
                    train ? "train" : (cross ? "cross_evaluate" : "evaluate")};
  if (train) {
    // The ledger's row of this attempt was computed from the stored plan: a re-sent task with another plan could
    // train past the budget or rewrite the spend. Refused, the stored task and its state left alone.
    ASSIGN_OR_RETURN(const std::optional<v1::Task> stored, db_->StoredTask(key));
    if (stored) {
      if (const std::string diff = PlanDifference(*stored, task); !diff.empty()) {
        const absl::Status refused = absl::FailedPreconditionError(absl::StrCat(
            "run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
            " was offered before with another plan (", diff, "): refused, the privacy ledger accounts the first one"));
        LOG(ERROR) << refused;
        return refused;
      }
    }
  }
  RETURN_IF_ERROR(db_->BeginTask(key, task));
  declined_reason_.clear();
  absl::Status status;
  {
    Heartbeater heartbeat(client_.get(), task.run_id(), key.round, heartbeat_period_, "downloading", metrics_);
    const AttachedHeartbeat retries(retry_reporter_.get(), &heartbeat);  // "retrying: ..." while a call is retried.
    if (cross) {
      status = RunCrossEvaluation(CrossSiteContext{config_, *client_, *db_, site_}, task, heartbeat);
      if (status.ok()) status = FinishRun(task.run_id(), "completed");
    } else {
      status = train ? RunTrain(task, heartbeat) : RunEvaluateTask(task, heartbeat);
    }
    if (!status.ok()) failure_stage_ = StageOf(heartbeat.state(), status);
    // The last state the coordinator sees for this task (sent before the heartbeat thread ends).
    const bool declined = status.ok() && !declined_reason_.empty();
    heartbeat.SetState(declined      ? "declined"
                       : status.ok() ? "done"
                       : status.code() == absl::StatusCode::kCancelled
                           ? "cancelled"
                           : absl::StrCat("failed: ", scrubber_.Scrub(status.message(), kMaxStateReasonBytes)),
                       status.ok() ? 1.0 : 0.0);
    if (heartbeat.run_ended()) {
      LOG(WARNING) << "run " << task.run_id() << " ended at the coordinator: " << heartbeat.reason();
      const absl::Status finished = FinishRun(task.run_id(), "ended");
      if (!finished.ok()) LOG(ERROR) << "cannot record the end of run " << task.run_id() << ": " << finished;
    }
  }
  const bool declined = status.ok() && !declined_reason_.empty();
  const std::string state = declined                                        ? "declined"
                            : status.ok()                                   ? "done"
                            : status.code() == absl::StatusCode::kCancelled ? "cancelled"
                                                                            : "failed";
  const absl::Status recorded = db_->SetTaskState(key, state,
                                                  declined      ? declined_reason_
                                                  : status.ok() ? ""
                                                                : std::string(status.message()));
  if (!recorded.ok()) LOG(ERROR) << "cannot record the task's state: " << recorded;
  return status;
}

absl::Status FederatedAgent::RunTrain(const v1::Task& task, Heartbeater& heartbeat) {
  TrainRound round{task, TaskKey{task.run_id(), task.round(), task.attempt(), "train"}};
  round.train_images = static_cast<int64_t>(site_.split.EntriesIn(data::Split::kTrain).size());
  // DP-FedAvg without secure aggregation: the coordinator adds the noise, which the site cannot verify.
  const bool secure = task.plan().secure_aggregation();
  if (task.plan().dp() == "dp-fedavg" && !secure) {
    if (budget_->max_epsilon() > 0) {
      ASSIGN_OR_RETURN(const v1::PrivacyAccount account, budget_->Account());
      RETURN_IF_ERROR(Decline(task, round.key,
                              absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
                                           ": dp-fedavg without secure aggregation: the noise is the coordinator's to "
                                           "add; this site's budget needs noise it adds itself"),
                              account));
      return absl::OkStatus();
    }
    LOG(WARNING) << "run " << task.run_id() << " round " << task.round() << ": dp-fedavg without secure aggregation: "
                 << "the coordinator adds the noise; accounted at sigma " << task.plan().dp_noise_multiplier()
                 << ", a guarantee against everyone but the coordinator (this site has no budget)";
  }
  // Then the privacy budget: one network is the least a round trains (more only add to epsilon), so a round that is
  // over budget even so is declined before its model is downloaded.
  ASSIGN_OR_RETURN(bool declined,
                   DeclineOverBudget(task, round.key, RoundShape{round.train_images, 1, 0, 1}, "before the download"));
  if (declined) return absl::OkStatus();
  const fs::path work(config_.work_dir());
  round.run_dir = work / "runs" / task.run_id();
  round.round_dir = round.run_dir / absl::StrCat("round-", task.round(), "-", task.attempt());
  ASSIGN_OR_RETURN(round.encoding, fl::GetEncoding(task.plan()));
  RETURN_IF_ERROR(io::MakeDirectories(round.round_dir.string()));
  LOG(INFO) << "run " << task.run_id() << " round " << task.round() << "/" << task.total_rounds() << " attempt "
            << task.attempt() << ": training (" << task.plan().local_epochs() << " epochs, "
            << fl::EncodingName(round.encoding) << ")";
  const CancelFn cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  // Where the round's time goes, logged once it is done: what the federation costs (download, load, encode, upload)
  // next to the site's own work (fine-tuning, evaluation). tests/benchmarks/federation/full_model.sh reads it.
  RoundTimer timer;
  ASSIGN_OR_RETURN(round.global_path, client_->DownloadModel(task.model_digest(), task.model_bytes(),
                                                             (work / "models").string(), cancelled));
  timer.Lap("download");
  ASSIGN_OR_RETURN(round.global, model::LoadCheckpoint(round.global_path));
  ASSIGN_OR_RETURN(round.personalization,
                   federation::ReadPersonalization(task.plan().personalization(), "task plan personalization"));
  ASSIGN_OR_RETURN(round.start, PrepareRoundStart(round.personalization, round.global, round.global_path,
                                                  RoundDirsOf(task, round.run_dir, round.round_dir)));
  if (!round.start.local.empty()) {
    LOG(INFO) << "personalization " << federation::Text(round.personalization) << ": " << round.start.local.size()
              << " BatchNorm tensors (" << round.start.local_values << " values) stay at this site; the update "
              << "carries the other " << round.start.shared_tensors << " tensors";
  }
  timer.Lap("load");
  // The exact check with the model's networks (DITTO trains a personal copy of each too), before the secure
  // aggregation session is joined (a declined site sends no keys) and before the site's data is touched.
  round.shape.train_images = round.train_images;
  round.shape.members = static_cast<int>(round.global.members.size());
  round.shape.train_pairs = round.global.duo ? DuoTrainingPairs(site_) : 0;
  round.shape.copies = round.personalization == v1::PERSONALIZATION_DITTO ? 2 : 1;
  ASSIGN_OR_RETURN(declined, DeclineOverBudget(task, round.key, round.shape, "before training"));
  if (declined) return absl::OkStatus();
  std::unique_ptr<SiteSecAggSession> secagg;
  if (secure) {
    RETURN_IF_ERROR(CheckSecureAggregationPlan(task, round.encoding, round.personalization));
    ASSIGN_OR_RETURN(const std::string recorded, RecordedUpdateSha(*db_, round.key));
    if (recorded.empty()) {
      RETURN_IF_ERROR(CheckCancelled(heartbeat, "secure aggregation", task));
      absl::StatusOr<std::unique_ptr<SiteSecAggSession>> begun = BeginSecureAggregation(round, heartbeat);
      if (begun.status().code() == absl::StatusCode::kAlreadyExists) {
        // This site advertised keys for this attempt before (an earlier try of the task failed after the keys, or
        // the agent restarted) and the session's secrets are gone: it cannot mask for this session. It declines the
        // attempt, so that the coordinator counts it as dropped instead of waiting for it.
        const std::string reason = absl::StrCat("secure aggregation: this site's keys for run ", task.run_id(),
                                                " round ", task.round(), " attempt ", task.attempt(),
                                                " were lost (a failed try or a restart after the key advertisement)");
        LOG(WARNING) << reason << "; declining the attempt";
        ASSIGN_OR_RETURN(const v1::PrivacyAccount account, budget_->Account());
        RETURN_IF_ERROR(client_->DeclineTask(task.run_id(), task.round(), task.attempt(), reason, account));
        return db_->SetTaskState(round.key, "declined", reason);
      }
      ASSIGN_OR_RETURN(secagg, std::move(begun));
      timer.Lap("secure aggregation keys and shares");
    } else {
      LOG(WARNING) << "run " << task.run_id() << " round " << task.round() << " attempt " << task.attempt()
                   << ": the masked update was recorded by an earlier agent; it is uploaded again, but this site "
                   << "takes no part in unmasking (the session's secrets were in that agent's memory)";
    }
  }
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "training", task));
  // The planned phase is recorded before the site's data is touched: a crash mid-training is accounted all the same.
  RETURN_IF_ERROR(budget_->RecordRound(task, round.shape));
  RETURN_IF_ERROR(FinetuneRound(round, heartbeat));
  RETURN_IF_ERROR(RecordPrivacySpent(round));
  if (!round.start.local.empty()) {
    ASSIGN_OR_RETURN(model::Checkpoint tuned, model::LoadCheckpoint(round.tuned.checkpoint_path));
    RETURN_IF_ERROR(KeepLocalTensors(round.start, tuned, round.run_dir.string()));
  }
  timer.Lap("fine-tuning");
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "the upload", task));
  heartbeat.SetTrainLoss(SendsLosses(config_, task) ? round.train_loss : 0);
  heartbeat.SetState("encoding", 0.8);
  if (secure) {
    RETURN_IF_ERROR(WriteMaskedUpdate(round, secagg.get()));
  } else {
    RETURN_IF_ERROR(WriteUpdate(round));
  }
  timer.Lap("encode");
  RETURN_IF_ERROR(UploadRoundUpdate(round, heartbeat));
  timer.Lap("upload");
  if (secagg != nullptr) {
    RETURN_IF_ERROR(secagg->Unmask());
    timer.Lap("unmasking");
  }
  if (round.personalization == v1::PERSONALIZATION_DITTO) {
    RETURN_IF_ERROR(CheckCancelled(heartbeat, "training the personal model", task));
    RETURN_IF_ERROR(TrainPersonal(round, heartbeat));
    RETURN_IF_ERROR(RecordPrivacySpent(round));
    timer.Lap("personal fine-tuning");
  }
  heartbeat.SetState("evaluating", 0.9);
  ASSIGN_OR_RETURN(v1::MetricsReport report, EvaluateRound(round));
  RETURN_IF_ERROR(KeepAdapted(round));
  RETURN_IF_ERROR(AddPrivacy({round.round_dir.string()}, &report));
  timer.Lap("evaluation");
  if (!config_.share_metrics()) StripPerformance(&report);
  heartbeat.SetState("reporting", 0.98);
  RETURN_IF_ERROR(client_->ReportMetrics(report));
  timer.Lap("report");
  LOG(INFO) << "round timings of run " << task.run_id() << " round " << task.round() << " attempt " << task.attempt()
            << ": " << timer.Describe();
  return absl::OkStatus();
}

absl::StatusOr<bool> FederatedAgent::DeclineOverBudget(const v1::Task& task, const TaskKey& key,
                                                       const RoundShape& shape, const char* when) {
  ASSIGN_OR_RETURN(const BudgetDecision decision, budget_->CheckRound(task, shape));
  if (!decision.decline) {
    LOG(INFO) << "privacy budget " << when << ": " << decision.reason;
    return false;
  }
  // An attempt whose update was written before its privacy was accounted (by an agent older than the budget):
  // its data was used; it is accounted now (RunTrain records it) and completed, not declined.
  ASSIGN_OR_RETURN(const std::optional<TaskRecord> record, db_->FindTask(key));
  if (record && (record->state == "update-written" || record->state == "uploaded" || record->state == "done")) {
    LOG(WARNING) << "privacy budget " << when << ": " << decision.reason << "; but its update was written before "
                 << "(state " << record->state << "): accounted now and completed, not declined";
    return false;
  }
  RETURN_IF_ERROR(Decline(task, key, decision.reason, decision.account));
  return true;
}

absl::Status FederatedAgent::Decline(const v1::Task& task, const TaskKey& key, const std::string& reason,
                                     const v1::PrivacyAccount& account) {
  LOG(WARNING) << "privacy budget: declining " << reason
               << ". Nothing is trained; the run goes on without this site (SiteAgentConfig.max_epsilon decides, "
               << "the coordinator cannot change it).";
  RETURN_IF_ERROR(client_->DeclineTask(task.run_id(), task.round(), task.attempt(), reason, account));
  RETURN_IF_ERROR(db_->SetTaskState(key, "declined", reason));
  declined_reason_ = reason;
  return absl::OkStatus();
}

absl::Status FederatedAgent::RecordPrivacySpent(const TrainRound& round) {
  const bool ditto = round.personalization == v1::PERSONALIZATION_DITTO;
  if (ditto && !round.personal) return absl::OkStatus();  // Recorded once the personal model is trained too.
  std::vector<NetworkPhase> ran;
  AddDpPhases(round.tuned, "", &ran);
  if (ditto) AddDpPhases(round.personal->result, "personal-", &ran);
  RETURN_IF_ERROR(budget_->RecordRound(round.task, round.shape, ran));
  ASSIGN_OR_RETURN(const v1::PrivacyAccount account, budget_->Account());
  PublishPrivacy(account, metrics_);
  const bool coordinator_noise = round.task.plan().dp() == "dp-fedavg" && !round.task.plan().secure_aggregation();
  LOG(INFO) << "run " << round.task.run_id() << " round " << round.task.round() << " trained: " << PrivacyLine(account)
            << (coordinator_noise ? " (dp-fedavg noise added by the coordinator: no guarantee against the coordinator)"
                                  : "");
  return absl::OkStatus();
}

absl::Status FederatedAgent::AddPrivacy(const std::vector<std::string>& report_dirs, v1::MetricsReport* report) {
  ASSIGN_OR_RETURN(const v1::PrivacyAccount account, budget_->Account());
  *report->mutable_privacy() = account;
  for (const std::string& dir : report_dirs) RETURN_IF_ERROR(AddPrivacyToLocalReport(dir, account));
  return absl::OkStatus();
}

absl::Status FederatedAgent::FinetuneRound(TrainRound& round, Heartbeater& heartbeat) {
  const int networks = static_cast<int>(round.global.members.size()) + (round.global.duo ? 1 : 0);
  ASSIGN_OR_RETURN(TunedModel tuned, FinetuneModel(config_, round.task, networks, round.start.path, round.round_dir,
                                                   round.task.plan().proximal_mu(), "", heartbeat, 0.05, 0.75));
  round.tuned = std::move(tuned.result);
  round.train_loss = tuned.train_loss;
  round.validation_loss = tuned.validation_loss;
  return absl::OkStatus();
}

absl::Status FederatedAgent::TrainPersonal(TrainRound& round, Heartbeater& heartbeat) {
  const v1::Task& task = round.task;
  const double lambda = task.plan().ditto_lambda();
  if (!(lambda > 0) || !std::isfinite(lambda)) {
    return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(),
                                                   ": personalization DITTO with ditto_lambda ", lambda,
                                                   " (must be > 0)"));
  }
  ASSIGN_OR_RETURN(const std::string start,
                   PersonalStart(RoundDirsOf(task, round.run_dir, round.round_dir), round.global_path));
  LOG(INFO) << "personalization ditto: training the personal model of run " << task.run_id() << " round "
            << task.round() << " toward this round's global model (lambda " << lambda << "); it stays at this site";
  const int networks = static_cast<int>(round.global.members.size()) + (round.global.duo ? 1 : 0);
  ASSIGN_OR_RETURN(round.personal, FinetuneModel(config_, task, networks, start, round.round_dir / "personal", lambda,
                                                 round.global_path, heartbeat, 0.86, 0.04));
  const std::string kept = PersonalFilesOf(round.run_dir.string()).personal_model;
  RETURN_IF_ERROR(io::CopyFileAtomically(round.personal->result.checkpoint_path, kept));
  LOG(INFO) << "personal model of run " << task.run_id() << " round " << task.round() << ": validation BCE "
            << round.personal->validation_loss << ", kept in " << kept;
  return absl::OkStatus();
}

absl::Status FederatedAgent::WriteUpdate(TrainRound& round) {
  const v1::Task& task = round.task;
  const fl::Encoding encoding = round.encoding;
  round.update_path = (round.round_dir / "update.bin").string();
  fl::ResidualPaths residual;
  residual.current = (round.run_dir / "residual.bin").string();
  residual.before = (round.round_dir / "residual.before.bin").string();
  residual.after = (round.round_dir / "residual.after.bin").string();
  for (int a = task.attempt() - 1; a >= 0; --a) {
    const fs::path earlier = round.run_dir / absl::StrCat("round-", task.round(), "-", a) / "residual.before.bin";
    residual.earlier_attempts.push_back(earlier.string());
  }
  ASSIGN_OR_RETURN(round.update_sha256, RecordedUpdateSha(*db_, round.key));
  if (round.update_sha256.empty()) {
    ASSIGN_OR_RETURN(model::Checkpoint local, model::LoadCheckpoint(round.tuned.checkpoint_path));
    // FEDBN/SILOBN: the shared tensors only (a partial bundle); the site's own stay in local_bn.bin.
    ASSIGN_OR_RETURN(fl::TensorMap delta, SharedDelta(round.start, local));
    if (task.plan().dp() == "dp-fedavg") {
      // Client-level DP: the site bounds its contribution; the coordinator adds the noise to the sum.
      ASSIGN_OR_RETURN(const double norm, ClipDeltaL2Norm(delta, task.plan().dp_clip_norm()));
      LOG(INFO) << "dp-fedavg: delta L2 norm " << norm
                << (norm > task.plan().dp_clip_norm() ? " clipped to " : " within the clip norm ")
                << task.plan().dp_clip_norm();
    }
    fl::EncodeOptions encode_options;
    encode_options.encoding = encoding;
    if (task.plan().topk_fraction() > 0) encode_options.topk_fraction = task.plan().topk_fraction();
    ASSIGN_OR_RETURN(fl::EncodedBundle encoded, fl::EncodeWithResidual(delta, encode_options, residual));
    const std::string bytes = encoded.bundle.SerializeAsString();
    RETURN_IF_ERROR(io::WriteFileAtomically(round.update_path, bytes));
    round.update_sha256 = io::Sha256Hex(bytes);
    RETURN_IF_ERROR(db_->RecordUpdate(round.key, round.update_path, round.update_sha256,
                                      static_cast<int64_t>(bytes.size()), round.tuned.train_images, round.train_loss,
                                      round.validation_loss));
    LOG(INFO) << "update for run " << task.run_id() << " round " << task.round() << ": " << bytes.size() << " bytes ("
              << fl::EncodingName(encoding) << ", dense fp32 " << encoded.dense_fp32_bytes << "), sha256 "
              << round.update_sha256;
  }
  // The residual moves on only once the payload that consumed it is recorded (idempotent after a restart).
  return fl::CommitResidual(encoding, residual);
}

absl::StatusOr<std::unique_ptr<SiteSecAggSession>> FederatedAgent::BeginSecureAggregation(const TrainRound& round,
                                                                                          Heartbeater& heartbeat) {
  SecAggSite site;
  site.client = client_.get();
  site.site_id = config_.site_id();
  site.site_key_path = config_.site_key();
  site.ca_cert_path = config_.ca_cert();
  site.round_dir = round.round_dir.string();
  site.cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  site.set_state = [&heartbeat](const std::string& state, double progress) { heartbeat.SetState(state, progress); };
  SecAggOptions options;
  options.wait_seconds = std::max(1, options_.task_wait_seconds);
  const int64_t num_samples = static_cast<int64_t>(site_.split.EntriesIn(data::Split::kTrain).size());
  return SiteSecAggSession::Begin(site, round.task, fl::CheckpointTensors(round.global), num_samples, options);
}

absl::Status FederatedAgent::WriteMaskedUpdate(TrainRound& round, SiteSecAggSession* session) {
  const v1::Task& task = round.task;
  round.update_path = (round.round_dir / "update.bin").string();
  ASSIGN_OR_RETURN(round.update_sha256, RecordedUpdateSha(*db_, round.key));
  if (!round.update_sha256.empty()) return absl::OkStatus();
  if (session == nullptr) {
    return absl::InternalError(absl::StrCat("run ", task.run_id(), " round ", task.round(),
                                            ": no secure aggregation session and no recorded update"));
  }
  if (session->num_samples() != round.tuned.train_images) {
    // The coordinator refuses an upload whose num_samples is not the one advertised (the split changed?).
    return absl::FailedPreconditionError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": trained on ",
                                                      round.tuned.train_images, " images, advertised ",
                                                      session->num_samples(), " for secure aggregation"));
  }
  ASSIGN_OR_RETURN(model::Checkpoint local, model::LoadCheckpoint(round.tuned.checkpoint_path));
  ASSIGN_OR_RETURN(fl::TensorMap delta, SharedDelta(round.start, local));
  ASSIGN_OR_RETURN(const MaskedUpdate masked, session->MaskUpdate(delta));
  const std::string bytes = masked.bundle.SerializeAsString();
  RETURN_IF_ERROR(io::WriteFileAtomically(round.update_path, bytes));
  round.update_sha256 = io::Sha256Hex(bytes);
  RETURN_IF_ERROR(db_->RecordUpdate(round.key, round.update_path, round.update_sha256,
                                    static_cast<int64_t>(bytes.size()), round.tuned.train_images, round.train_loss,
                                    round.validation_loss));
  LOG(INFO) << "masked update for run " << task.run_id() << " round " << task.round() << ": " << bytes.size()
            << " bytes, sha256 " << round.update_sha256;
  return absl::OkStatus();
}

absl::Status FederatedAgent::UploadRoundUpdate(const TrainRound& round, Heartbeater& heartbeat) {
  heartbeat.SetState("uploading", 0.85);
  UploadRequest upload;
  upload.run_id = round.task.run_id();
  upload.round = round.task.round();
  upload.path = round.update_path;
  upload.sha256 = round.update_sha256;
  upload.num_samples = round.tuned.train_images;
  upload.encoding = round.encoding;
  // Not sent in a DP round nor by a site with a budget (computed outside the DP mechanisms): 0.
  const bool sends_losses = SendsLosses(config_, round.task);
  upload.train_loss = sends_losses ? round.train_loss : 0;
  upload.validation_loss = sends_losses ? round.validation_loss : 0;
  const CancelFn cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  ASSIGN_OR_RETURN(const v1::UploadResponse uploaded, client_->UploadUpdate(upload, cancelled));
  LOG(INFO) << "update for run " << upload.run_id << " round " << upload.round << " accepted"
            << " (L2 norm " << uploaded.l2_norm() << ") " << uploaded.message();
  return db_->SetTaskState(round.key, "uploaded");
}

absl::StatusOr<v1::MetricsReport> FederatedAgent::EvaluateRound(const TrainRound& round) {
  const v1::Task& task = round.task;
  v1::MetricsReport report;
  report.set_run_id(task.run_id());
  report.set_round(task.round());
  report.set_kind("round");
  report.set_personalization(round.personalization);
  if (SendsLosses(config_, task)) {
    report.set_train_loss(round.train_loss);
    report.set_validation_loss(round.validation_loss);
  }
  if (round.tuned.test_images == 0) {
    LOG(WARNING) << "the test split is empty: no round evaluation";
    return report;
  }
  // Global vs locally fine-tuned on the local test split; the report stays here.
  ASSIGN_OR_RETURN(
      EvaluateResult evaluated,
      RunEvaluate(EvaluateOptionsFor(config_, round.global_path, round.tuned.checkpoint_path, round.tuned.test_manifest,
                                     round.round_dir.string(),
                                     absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(), " round ",
                                                  task.round(), ": global model vs locally fine-tuned"))));
  LOG(INFO) << "round " << task.round() << " evaluation: " << evaluated.summary_line;
  report.set_test_cases(evaluated.images);
  *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kA, "global", round.global.weights_sha256);
  *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kB, "local", round.tuned.weights_sha256);
  *report.add_comparisons() = ModelComparisonFrom(evaluated.report, "global", "local");
  return report;
}

absl::Status FederatedAgent::KeepAdapted(const TrainRound& round) {
  const v1::Task& task = round.task;
  if (fl::KeepsTensorsLocal(round.personalization)) {
    // FEDBN/SILOBN: the adapted model is made at the final evaluation (PrepareAdapted) from the final global model.
    return absl::OkStatus();
  }
  // The adapted model: the run's fine-tuned model (DITTO: personal model) with the best validation loss so far.
  const bool ditto = round.personal.has_value();
  const train::FinetuneResult& candidate = ditto ? round.personal->result : round.tuned;
  const double validation_loss = ditto ? round.personal->validation_loss : round.validation_loss;
  ASSIGN_OR_RETURN(std::optional<AdaptedModel> best, db_->BestAdapted(task.run_id()));
  const bool same_round = best && best->round == task.round() && best->attempt == task.attempt();
  if (best && !same_round && !(validation_loss < best->validation_loss)) return absl::OkStatus();
  const fs::path adapted_dir = fs::path(config_.work_dir()) / "adapted" / task.run_id();
  RETURN_IF_ERROR(io::MakeDirectories(adapted_dir.string()));
  AdaptedModel adapted{task.run_id(),   task.round(),
                       task.attempt(),  candidate.weights_sha256,
                       validation_loss, (adapted_dir / "model.ckpt").string()};
  RETURN_IF_ERROR(io::CopyFileAtomically(candidate.checkpoint_path, adapted.path));
  RETURN_IF_ERROR(db_->RecordAdapted(adapted));
  LOG(INFO) << "adapted model of run " << task.run_id() << ": round " << task.round() << (ditto ? " personal" : "")
            << " model (validation BCE " << validation_loss << ")";
  return absl::OkStatus();
}

absl::Status FederatedAgent::PrepareAdapted(const v1::Task& task, const std::string& global_path) {
  ASSIGN_OR_RETURN(const v1::Personalization personalization,
                   federation::ReadPersonalization(task.plan().personalization(), "task plan personalization"));
  if (!fl::KeepsTensorsLocal(personalization)) return absl::OkStatus();
  const fs::path work(config_.work_dir());
  const std::string adapted_path = (work / "adapted" / task.run_id() / "model.ckpt").string();
  ASSIGN_OR_RETURN(
      std::optional<std::string> digest,
      WriteFinalAdapted(personalization, global_path, (work / "runs" / task.run_id()).string(), adapted_path));
  if (!digest) return absl::OkStatus();
  // The only adapted model of the run (rounds record none under FEDBN/SILOBN); its validation BCE is not measured.
  return db_->RecordAdapted(AdaptedModel{task.run_id(), 0, 0, *digest, 0.0, adapted_path});
}

absl::Status FederatedAgent::RunEvaluateTask(const v1::Task& task, Heartbeater& heartbeat) {
  const fs::path work(config_.work_dir());
  const fs::path reports = work / "reports" / task.run_id();
  RETURN_IF_ERROR(io::MakeDirectories(reports.string()));
  const CancelFn cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  const std::string models = (work / "models").string();
  ASSIGN_OR_RETURN(std::string base_path,
                   client_->DownloadModel(task.base_model_digest(), task.base_model_bytes(), models, cancelled));
  ASSIGN_OR_RETURN(std::string global_path,
                   client_->DownloadModel(task.model_digest(), task.model_bytes(), models, cancelled));
  RETURN_IF_ERROR(PrepareAdapted(task, global_path));
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "the final evaluation", task));
  ASSIGN_OR_RETURN(std::optional<AdaptedModel> adapted, db_->BestAdapted(task.run_id()));
  if (adapted && !fs::exists(adapted->path)) {
    LOG(WARNING) << "adapted model " << adapted->path << " is missing: it is left out of the final evaluation";
    adapted.reset();
  }
  const std::string test_manifest = (reports / "test.csv").string();
  RETURN_IF_ERROR(train::WriteSplitManifest(site_, data::Split::kTest, test_manifest));

  heartbeat.SetState("evaluating", 0.1);
  // The reports say which strategy made the adapted model.
  const std::string strategy(federation::Text(
      federation::ReadPersonalization(task.plan().personalization(), "").value_or(v1::PERSONALIZATION_NONE)));
  auto evaluate = [&](const std::string& a, const std::string& b, const std::string& name,
                      const std::string& title) -> absl::StatusOr<EvaluateResult> {
    return RunEvaluate(EvaluateOptionsFor(config_, a, b, test_manifest, (reports / name).string(),
                                          absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(),
                                                       " (personalization ", strategy, "): ", title)));
  };
  v1::MetricsReport report;
  report.set_run_id(task.run_id());
  report.set_round(0);
  report.set_kind("final");
  report.set_personalization(
      federation::ReadPersonalization(task.plan().personalization(), "").value_or(v1::PERSONALIZATION_NONE));
  ASSIGN_OR_RETURN(EvaluateResult global_vs_base,
                   evaluate(base_path, global_path, "global-vs-open-source", "open-source vs final global model"));
  const std::string base_digest = EvaluatedDigest((reports / "global-vs-open-source").string(), "a").value_or("");
  const std::string global_digest = EvaluatedDigest((reports / "global-vs-open-source").string(), "b").value_or("");
  report.set_test_cases(global_vs_base.images);
  *report.add_models() = ModelEvaluationFrom(global_vs_base.report, ReportSide::kA, "open-source", base_digest);
  *report.add_models() = ModelEvaluationFrom(global_vs_base.report, ReportSide::kB, "global", global_digest);
  *report.add_comparisons() = ModelComparisonFrom(global_vs_base.report, "open-source", "global");
  if (adapted) {
    RETURN_IF_ERROR(CheckCancelled(heartbeat, "evaluating the adapted model", task));
    heartbeat.SetState("evaluating", 0.4);
    ASSIGN_OR_RETURN(EvaluateResult adapted_vs_base, evaluate(base_path, adapted->path, "adapted-vs-open-source",
                                                              "open-source vs this site's adapted model"));
    heartbeat.SetState("evaluating", 0.7);
    ASSIGN_OR_RETURN(EvaluateResult adapted_vs_global, evaluate(global_path, adapted->path, "adapted-vs-global",
                                                                "final global vs this site's adapted model"));
    *report.add_models() = ModelEvaluationFrom(adapted_vs_base.report, ReportSide::kB, "adapted", adapted->digest);
    *report.add_comparisons() = ModelComparisonFrom(adapted_vs_base.report, "open-source", "adapted");
    *report.add_comparisons() = ModelComparisonFrom(adapted_vs_global.report, "global", "adapted");
  } else {
    LOG(WARNING) << "site " << config_.site_id() << " has no adapted model of run " << task.run_id()
                 << ": the final report has the open-source and global models only";
  }
  if (task.plan().local_only_baseline() && budget_->max_epsilon() > 0) {
    LOG(WARNING) << "run " << task.run_id() << ": the local-only baseline is not trained: it would fine-tune on this "
                 << "site's data without differential privacy, outside its privacy budget (max_epsilon "
                 << budget_->max_epsilon() << "); the final report has no \"local-only\" model";
  } else if (task.plan().local_only_baseline()) {
    RETURN_IF_ERROR(CheckCancelled(heartbeat, "the local-only baseline", task));
    RETURN_IF_ERROR(EvaluateLocalOnly(task, base_path, task.base_model_digest(), global_path,
                                      adapted ? adapted->path : "", heartbeat, &report));
  }
  heartbeat.SetState("sharing", 0.9);
  absl::StatusOr<bool> shared =
      ShareAdaptedModel(CrossSiteContext{config_, *client_, *db_, site_}, task, adapted, cancelled);
  if (!shared.ok()) {
    // The coordinator no longer takes it (the stage moved on, another payload was taken, the site may not): the final
    // report still goes up, with the model "not shared". Cancellation and local failures end the task as before.
    const absl::StatusCode code = shared.status().code();
    if (code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kAlreadyExists &&
        code != absl::StatusCode::kPermissionDenied && code != absl::StatusCode::kInvalidArgument) {
      return shared.status();
    }
    LOG(WARNING) << "the adapted model of run " << task.run_id() << " could not be shared (" << shared.status()
                 << "): the final report says \"not shared\"";
    shared = false;
  }
  report.set_adapted_model_shared(*shared);
  {
    std::vector<std::string> dirs;
    for (const char* name : {"global-vs-open-source", "adapted-vs-open-source", "adapted-vs-global",
                             "local-only-vs-open-source", "global-vs-local-only", "adapted-vs-local-only"}) {
      dirs.push_back((reports / name).string());
    }
    RETURN_IF_ERROR(AddPrivacy(dirs, &report));
  }
  if (!config_.share_metrics()) StripPerformance(&report);
  heartbeat.SetState("reporting", 0.95);
  RETURN_IF_ERROR(client_->ReportMetrics(report));
  LOG(INFO) << "final evaluation of run " << task.run_id() << " reported; reports in " << reports.string();
  // With cross-site evaluation the run ends for the site after its CROSS_EVALUATE task, or when the coordinator
  // lists it in Task.ended_runs (a site with nothing to evaluate gets no task).
  if (task.cross_site_evaluation()) return absl::OkStatus();
  return FinishRun(task.run_id(), "completed");
}

absl::Status FederatedAgent::EvaluateLocalOnly(const v1::Task& task, const std::string& base_path,
                                               const std::string& base_digest, const std::string& global_path,
                                               const std::string& adapted_path, Heartbeater& heartbeat,
                                               v1::MetricsReport* report) {
  const fs::path reports = fs::path(config_.work_dir()) / "reports" / task.run_id();
  const std::string test_manifest = (reports / "test.csv").string();
  const int networks = 4;  // At most: three SoloNet members and a DuoNet; progress is a guide only.
  auto progress = std::make_shared<TrainingProgress>(networks, std::max(1, task.plan().local_only_epochs()));
  heartbeat.SetState("training the local-only baseline", 0.75,
                     [progress](std::string* state, double* fraction, double* train_loss) {
                       const TrainingProgress::View view = progress->Describe();
                       *state = absl::StrCat("local-only baseline: ", view.state);
                       *fraction = 0.75 + 0.1 * view.fraction;
                       *train_loss = view.train_loss;
                     });
  ASSIGN_OR_RETURN(const LocalOnlyModel local_only,
                   TrainLocalOnly(config_, base_path, base_digest, task.plan(), {progress.get()}));
  heartbeat.SetState("evaluating the local-only baseline", 0.85);
  auto evaluate = [&](const std::string& a, const std::string& name,
                      const std::string& title) -> absl::StatusOr<EvaluateResult> {
    return RunEvaluate(
        EvaluateOptionsFor(config_, a, local_only.path, test_manifest, (reports / name).string(),
                           absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(), ": ", title)));
  };
  // The baseline against the open-source model (a = open-source, b = local-only).
  ASSIGN_OR_RETURN(EvaluateResult vs_base,
                   evaluate(base_path, "local-only-vs-open-source", "open-source vs the local-only baseline"));
  *report->add_models() = ModelEvaluationFrom(vs_base.report, ReportSide::kB, "local-only", local_only.digest);
  *report->add_comparisons() = ModelComparisonFrom(vs_base.report, "open-source", "local-only");
  // The federated models against the baseline: model a = local-only, b = global / adapted.
  auto against = [&](const std::string& b, const std::string& name, const std::string& title,
                     const std::string& b_name) -> absl::Status {
    ASSIGN_OR_RETURN(EvaluateResult result,
                     RunEvaluate(EvaluateOptionsFor(
                         config_, local_only.path, b, test_manifest, (reports / name).string(),
                         absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(), ": ", title))));
    *report->add_comparisons() = ModelComparisonFrom(result.report, "local-only", b_name);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(against(global_path, "global-vs-local-only", "local-only baseline vs final global model", "global"));
  if (!adapted_path.empty()) {
    RETURN_IF_ERROR(
        against(adapted_path, "adapted-vs-local-only", "local-only baseline vs this site's adapted model", "adapted"));
  }
  LOG(INFO) << "local-only baseline of run " << task.run_id() << ": " << vs_base.summary_line;
  return absl::OkStatus();
}

}  // namespace fedtune::agent
