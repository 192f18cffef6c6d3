#include "site_agent/federated_agent.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/pki/certificate.h"
#include "common/status_macros.h"
#include "common/train/trainer.h"
#include "site_agent/agent_config.h"
#include "site_agent/evaluate.h"
#include "site_agent/finetune.h"
#include "site_agent/finetune_config.h"
#include "site_agent/metrics_report.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;

bool IsAuthError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnauthenticated || status.code() == absl::StatusCode::kPermissionDenied;
}

}  // namespace

// Sends Heartbeat every `period` on its own thread until destroyed, with the latest state; records a cancel.
// Thread-safe.
class Heartbeater {
 public:
  using Probe = std::function<void(std::string* state, double* progress, double* train_loss)>;

  Heartbeater(CoordinatorClient* client, std::string run_id, int32_t round, absl::Duration period, std::string state)
      : client_(client), run_id_(std::move(run_id)), round_(round), period_(period), state_(std::move(state)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Heartbeater() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  // The state to send; `probe`, when set, refines it just before each heartbeat (e.g. training progress). A new
  // state is sent at once (then every period), and the last state set before destruction is always sent.
  void SetState(std::string state, double progress, Probe probe = nullptr) {
    absl::MutexLock lock(&mu_);
    state_ = std::move(state);
    progress_ = progress;
    probe_ = std::move(probe);
    changed_ = true;
  }
  // The training loss sent from now on (the latest epoch's mean BCE).
  void SetTrainLoss(double loss) {
    absl::MutexLock lock(&mu_);
    train_loss_ = loss;
  }
  bool cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  bool run_ended() const {
    absl::MutexLock lock(&mu_);
    return run_ended_;
  }
  std::string reason() const {
    absl::MutexLock lock(&mu_);
    return reason_;
  }

 private:
  void Loop() {
    while (true) {
      v1::HeartbeatRequest request;
      Probe probe;
      bool last = false;
      {
        absl::MutexLock lock(&mu_);
        request.set_run_id(run_id_);
        request.set_round(round_);
        request.set_state(state_);
        request.set_progress(progress_);
        request.set_train_loss(train_loss_);
        probe = probe_;
        changed_ = false;
        last = stop_;
      }
      if (probe) {
        double progress = request.progress();
        double train_loss = request.train_loss();
        probe(request.mutable_state(), &progress, &train_loss);
        request.set_progress(progress);
        request.set_train_loss(train_loss);
      }
      absl::StatusOr<v1::HeartbeatResponse> response = client_->Heartbeat(request);
      if (!response.ok()) {
        LOG(WARNING) << "heartbeat (" << request.state() << "): " << response.status();
      } else if (response->cancel()) {
        absl::MutexLock lock(&mu_);
        if (!cancelled_) {
          LOG(WARNING) << "the coordinator cancelled the task of run " << run_id_ << " round " << round_ << ": "
                       << response->reason();
        }
        cancelled_ = true;
        run_ended_ = run_ended_ || response->run_ended();
        reason_ = response->reason();
      }
      if (last) return;
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || changed_; };
      mu_.AwaitWithTimeout(absl::Condition(&wake), period_);
      if (stop_ && !changed_) return;
    }
  }

  CoordinatorClient* client_;
  const std::string run_id_;
  const int32_t round_;
  const absl::Duration period_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool changed_ ABSL_GUARDED_BY(mu_) = false;  // A state not sent yet.
  std::string state_ ABSL_GUARDED_BY(mu_);
  double progress_ ABSL_GUARDED_BY(mu_) = 0;
  double train_loss_ ABSL_GUARDED_BY(mu_) = 0;
  Probe probe_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool run_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::string reason_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

namespace {

absl::Status CheckCancelled(const Heartbeater& heartbeat, absl::string_view step, const v1::Task& task) {
  if (!heartbeat.cancelled()) return absl::OkStatus();
  return absl::CancelledError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": cancelled by the ",
                                           "coordinator before ", step, " (", heartbeat.reason(), ")"));
}

// Copies a file atomically (temporary file in the destination's directory, then rename).
absl::Status CopyFileAtomically(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".tmp";
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    fs::remove(tmp);
    return absl::InternalError(absl::StrCat("cannot copy ", from, " to ", to, ": ", ec.message()));
  }
  return absl::OkStatus();
}

// A residual file: a serialized TensorBundle (fp32); an empty file is an empty residual.
absl::StatusOr<fl::TensorMap> ReadResidual(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  if (bytes.empty()) return fl::TensorMap();
  ASSIGN_OR_RETURN(v1::TensorBundle bundle, fl::ParseTensorBundle(bytes, path));
  return fl::DecodeTensors(bundle);
}

absl::Status WriteResidual(const std::string& path, const fl::TensorMap& residual) {
  if (residual.empty()) return io::WriteFileAtomically(path, "");
  ASSIGN_OR_RETURN(fl::EncodedBundle encoded, fl::EncodeTensors(residual, {fl::Encoding::kDenseFp32, 0.01}));
  return io::WriteFileAtomically(path, encoded.bundle.SerializeAsString());
}

// weights_sha256 of RunEvaluate's model "a" or "b" from its report.json.
absl::StatusOr<std::string> EvaluatedDigest(const std::string& report_dir, const char* side) {
  const std::string path = (fs::path(report_dir) / "report.json").string();
  ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.contains("models") || !json["models"].contains(side)) {
    return absl::DataLossError(absl::StrCat(path, ": no models.", side, ".weights_sha256"));
  }
  return json["models"][side].value("weights_sha256", "");
}

double MeanOf(const std::vector<double>& values) {
  if (values.empty()) return std::nan("");
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

}  // namespace

TrainingProgress DescribeTrainingProgress(const std::string& finetune_db, int networks, int epochs_per_network) {
  // Epochs per network in training order, read-only so that the heartbeat never contends with the trainer's writes.
  std::vector<int64_t> done;
  double latest_train_loss = 0;
  if (fs::exists(finetune_db)) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(finetune_db.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_busy_timeout(db, 200);
      sqlite3_stmt* stmt = nullptr;
      // The latest fine-tuning of the file (a round dir holds one), networks in the order they started.
      const char* sql =
          "SELECT COUNT(*) FROM finetune_epochs WHERE run_id = (SELECT MAX(id) FROM finetune_runs) "
          "GROUP BY member ORDER BY MIN(rowid);";
      if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK) {
        while (sqlite3_step(stmt) == SQLITE_ROW) done.push_back(sqlite3_column_int64(stmt, 0));
      }
      sqlite3_finalize(stmt);
      stmt = nullptr;
      const char* last = "SELECT train_loss FROM finetune_epochs ORDER BY rowid DESC LIMIT 1;";
      if (sqlite3_prepare_v2(db, last, -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
        latest_train_loss = sqlite3_column_double(stmt, 0);
      }
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
  }
  networks = std::max(1, networks);
  epochs_per_network = std::max(1, epochs_per_network);
  int64_t total = 0;
  for (int64_t count : done) total += std::min<int64_t>(count, epochs_per_network);
  // A network that recorded all its epochs is finished: the next one is training.
  int current = std::max<int>(1, static_cast<int>(done.size()));
  int64_t epoch = done.empty() ? 1 : done.back() + 1;
  if (!done.empty() && done.back() >= epochs_per_network && current < networks) {
    ++current;
    epoch = 1;
  }
  TrainingProgress progress;
  progress.state = absl::StrCat("training member ", current, "/", networks, ", epoch ",
                                std::min<int64_t>(epoch, epochs_per_network), "/", epochs_per_network);
  progress.fraction = std::min(1.0, static_cast<double>(total) / (networks * epochs_per_network));
  progress.train_loss = latest_train_loss;
  return progress;
}

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

  // Capabilities: the device training will use.
  ASSIGN_OR_RETURN(c10::Device device, train::ResolveDevice(config.finetune().device()));
  v1::Capabilities* caps = agent->hello_.mutable_capabilities();
  caps->set_agent_version(kAgentVersion);
  caps->set_device(device.str());
  caps->set_threads(config.finetune().threads() > 0 ? config.finetune().threads()
                                                    : static_cast<int>(std::thread::hardware_concurrency()));
  fl::SetSupportedEncodings(caps);
  ASSIGN_OR_RETURN(agent->site_, LoadSiteData(config.finetune()));
  *agent->hello_.mutable_dataset() = SummarizeDataset(agent->site_);

  RETURN_IF_ERROR(io::MakeDirectories(config.work_dir()));
  ASSIGN_OR_RETURN(agent->db_, AgentDatabase::Open((fs::path(config.work_dir()) / "site.db").string()));

  ClientOptions client;
  client.address = config.coordinator();
  client.tls = {config.site_cert(), config.site_key(), config.ca_cert()};
  client.server_name = config.server_name();
  client.rpc_timeout = absl::Seconds(config.rpc_timeout_seconds());
  client.retry.min_backoff = absl::Milliseconds(config.min_backoff_ms());
  client.retry.max_backoff = absl::Milliseconds(config.max_backoff_ms());
  client.retry.max_attempts = std::max(1, options.max_attempts_per_call);
  client.sleep = options.sleep;
  ASSIGN_OR_RETURN(agent->client_, CoordinatorClient::Create(client));
  return agent;
}

absl::Status FederatedAgent::SayHello() {
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
      LOG(WARNING) << response.status() << "; trying again in about " << backoff.NextDelay();
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
  Backoff backoff(forever, options_.sleep, static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) + 1);
  const int exit_after = config_.exit_after_runs();
  while (exit_after == 0 || finished_runs_ < exit_after) {
    absl::StatusOr<v1::Task> task = client_->GetTask(options_.task_wait_seconds);
    if (!task.ok()) {
      if (IsAuthError(task.status())) return task.status();
      if (task.status().code() == absl::StatusCode::kFailedPrecondition) {
        // E.g. a coordinator that lost this site's session: introduce the site again.
        LOG(WARNING) << task.status() << "; saying Hello again";
        RETURN_IF_ERROR(SayHello());
      }
      LOG(WARNING) << task.status() << "; polling again in about " << backoff.NextDelay();
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
  const bool train = task.kind() == v1::Task::TRAIN;
  if (!train && task.kind() != v1::Task::EVALUATE) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task.kind()));
  }
  if (task.run_id().empty() || task.run_id().find('/') != std::string::npos ||
      task.run_id().find("..") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("task with an unusable run id \"", task.run_id(), "\""));
  }
  const TaskKey key{task.run_id(), train ? task.round() : 0, task.attempt(), train ? "train" : "evaluate"};
  RETURN_IF_ERROR(db_->BeginTask(key, task));
  absl::Status status;
  {
    Heartbeater heartbeat(client_.get(), task.run_id(), key.round, heartbeat_period_, "downloading");
    status = train ? RunTrain(task, heartbeat) : RunEvaluateTask(task, heartbeat);
    // The last state the coordinator sees for this task (sent before the heartbeat thread ends).
    heartbeat.SetState(status.ok() ? "done"
                       : status.code() == absl::StatusCode::kCancelled
                           ? "cancelled"
                           : absl::StrCat("failed: ", status.message().substr(0, 200)),
                       status.ok() ? 1.0 : 0.0);
    if (heartbeat.run_ended()) {
      LOG(WARNING) << "run " << task.run_id() << " ended at the coordinator: " << heartbeat.reason();
      const absl::Status finished = FinishRun(task.run_id(), "ended");
      if (!finished.ok()) LOG(ERROR) << "cannot record the end of run " << task.run_id() << ": " << finished;
    }
  }
  const std::string state = status.ok()                                     ? "done"
                            : status.code() == absl::StatusCode::kCancelled ? "cancelled"
                                                                            : "failed";
  const absl::Status recorded = db_->SetTaskState(key, state, status.ok() ? "" : std::string(status.message()));
  if (!recorded.ok()) LOG(ERROR) << "cannot record the task's state: " << recorded;
  return status;
}

absl::Status FederatedAgent::RunTrain(const v1::Task& task, Heartbeater& heartbeat) {
  const TaskKey key{task.run_id(), task.round(), task.attempt(), "train"};
  const fs::path work(config_.work_dir());
  const fs::path run_dir = work / "runs" / task.run_id();
  const fs::path round_dir = run_dir / absl::StrCat("round-", task.round(), "-", task.attempt());
  RETURN_IF_ERROR(io::MakeDirectories(round_dir.string()));
  LOG(INFO) << "run " << task.run_id() << " round " << task.round() << "/" << task.total_rounds() << " attempt "
            << task.attempt() << ": training (" << task.plan().local_epochs() << " epochs, "
            << fl::EncodingName(fl::GetEncoding(task.plan()).value_or(fl::Encoding::kDenseFp32)) << ")";
  const CancelFn cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  ASSIGN_OR_RETURN(const std::string global_path, client_->DownloadModel(task.model_digest(), task.model_bytes(),
                                                                         (work / "models").string(), cancelled));
  ASSIGN_OR_RETURN(model::Checkpoint global, model::LoadCheckpoint(global_path));
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "training", task));

  // Fine-tuning (resumes from the round dir's state after a restart; quick when it had finished).
  TrainingValues values;
  values.local_epochs = std::max(1, task.plan().local_epochs());
  values.learning_rate =
      task.plan().learning_rate() > 0 ? task.plan().learning_rate() : config_.finetune().learning_rate();
  values.batch_size = task.plan().batch_size() > 0 ? task.plan().batch_size() : config_.finetune().batch_size();
  values.proximal_mu = task.plan().proximal_mu();
  const v1::FinetuneConfig finetune = TaskFinetuneConfig(config_, global_path, round_dir.string(), values);
  RETURN_IF_ERROR(ValidateFinetuneConfig(finetune));
  const int networks = static_cast<int>(global.members.size()) + (global.duo ? 1 : 0);
  const std::string epochs_db = (round_dir / "site.db").string();
  const int epochs = values.local_epochs;
  heartbeat.SetState("training", 0.05,
                     [epochs_db, networks, epochs](std::string* state, double* progress, double* train_loss) {
                       const TrainingProgress training = DescribeTrainingProgress(epochs_db, networks, epochs);
                       *state = training.state;
                       *progress = 0.05 + 0.75 * training.fraction;
                       *train_loss = training.train_loss;
                     });
  ASSIGN_OR_RETURN(const FinetuneResult tuned_result, RunFinetune(finetune));
  const FinetuneResult* tuned = &tuned_result;
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "the upload", task));
  std::vector<double> train_losses;
  std::vector<double> validation_losses;
  for (const train::TrainResult& member : tuned->members) {
    if (!member.history.empty()) train_losses.push_back(member.history.back().train_loss);
    validation_losses.push_back(member.best_validation_loss);
  }
  const double train_loss = MeanOf(train_losses);
  const double validation_loss = MeanOf(validation_losses);
  heartbeat.SetTrainLoss(train_loss);

  // The update payload: reused when it was written (and recorded) before a restart.
  heartbeat.SetState("encoding", 0.8);
  ASSIGN_OR_RETURN(fl::Encoding encoding, fl::GetEncoding(task.plan()));
  const std::string encoding_name = fl::EncodingName(encoding);
  const std::string update_path = (round_dir / "update.bin").string();
  const std::string residual_path = (run_dir / "residual.bin").string();
  const std::string residual_after = (round_dir / "residual.after.bin").string();
  ASSIGN_OR_RETURN(std::optional<TaskRecord> record, db_->FindTask(key));
  std::string sha;
  if (record && !record->update_sha256.empty() && fs::exists(record->update_path)) {
    ASSIGN_OR_RETURN(std::string on_disk, io::Sha256File(record->update_path));
    if (on_disk == record->update_sha256)
      sha = on_disk;
    else
      LOG(WARNING) << record->update_path << " no longer has its recorded sha256: encoding the update again";
  }
  if (sha.empty()) {
    ASSIGN_OR_RETURN(model::Checkpoint local, model::LoadCheckpoint(tuned->checkpoint_path));
    ASSIGN_OR_RETURN(fl::TensorMap delta,
                     fl::ComputeDelta(fl::CheckpointTensors(local), fl::CheckpointTensors(global)));
    fl::EncodeOptions encode_options;
    encode_options.encoding = encoding;
    if (task.plan().topk_fraction() > 0) encode_options.topk_fraction = task.plan().topk_fraction();
    fl::EncodedBundle encoded;
    if (encoding == fl::Encoding::kDenseFp32) {
      ASSIGN_OR_RETURN(encoded, fl::EncodeTensors(delta, encode_options));
    } else {
      // The residual this round starts from is pinned in the round dir, so that encoding again after a crash gives
      // the same payload; a retried attempt of the same round starts from the previous attempt's.
      const std::string before = (round_dir / "residual.before.bin").string();
      if (!fs::exists(before)) {
        std::string source = residual_path;
        for (int a = task.attempt() - 1; a >= 0; --a) {
          const fs::path previous = run_dir / absl::StrCat("round-", task.round(), "-", a) / "residual.before.bin";
          if (fs::exists(previous)) {
            source = previous.string();
            break;
          }
        }
        if (fs::exists(source)) {
          RETURN_IF_ERROR(CopyFileAtomically(source, before));
        } else {
          RETURN_IF_ERROR(io::WriteFileAtomically(before, ""));
        }
      }
      fl::ErrorFeedback feedback;
      ASSIGN_OR_RETURN(fl::TensorMap residual, ReadResidual(before));
      RETURN_IF_ERROR(feedback.SetResidual(residual));
      ASSIGN_OR_RETURN(encoded, feedback.Encode(delta, encode_options));
      RETURN_IF_ERROR(WriteResidual(residual_after, feedback.residual()));
    }
    const std::string bytes = encoded.bundle.SerializeAsString();
    RETURN_IF_ERROR(io::WriteFileAtomically(update_path, bytes));
    sha = io::Sha256Hex(bytes);
    RETURN_IF_ERROR(db_->RecordUpdate(key, update_path, sha, static_cast<int64_t>(bytes.size()), tuned->train_images,
                                      train_loss, validation_loss));
    LOG(INFO) << "update for run " << task.run_id() << " round " << task.round() << ": " << bytes.size() << " bytes ("
              << encoding_name << ", dense fp32 " << encoded.dense_fp32_bytes << "), sha256 " << sha;
  }
  // The residual moves on only once the payload that consumed it is recorded (idempotent after a restart).
  if (encoding != fl::Encoding::kDenseFp32 && fs::exists(residual_after)) {
    RETURN_IF_ERROR(CopyFileAtomically(residual_after, residual_path));
  }

  heartbeat.SetState("uploading", 0.85);
  UploadRequest upload;
  upload.run_id = task.run_id();
  upload.round = task.round();
  upload.path = update_path;
  upload.sha256 = sha;
  upload.num_samples = tuned->train_images;
  upload.encoding = encoding;
  upload.train_loss = train_loss;
  upload.validation_loss = validation_loss;
  ASSIGN_OR_RETURN(const v1::UploadResponse uploaded_response, client_->UploadUpdate(upload, cancelled));
  const v1::UploadResponse* uploaded = &uploaded_response;
  LOG(INFO) << "update for run " << task.run_id() << " round " << task.round() << " accepted"
            << " (L2 norm " << uploaded->l2_norm() << ") " << uploaded->message();
  RETURN_IF_ERROR(db_->SetTaskState(key, "uploaded"));

  // Global vs locally fine-tuned on the local test split; the report stays here.
  heartbeat.SetState("evaluating", 0.9);
  v1::MetricsReport report;
  report.set_run_id(task.run_id());
  report.set_round(task.round());
  report.set_kind("round");
  report.set_train_loss(train_loss);
  report.set_validation_loss(validation_loss);
  if (tuned->test_images > 0) {
    EvaluateOptions evaluate;
    evaluate.base_model = global_path;
    evaluate.model = tuned->checkpoint_path;
    evaluate.manifest = tuned->test_manifest;
    evaluate.data_root = finetune.data_root();
    evaluate.out_dir = round_dir.string();
    evaluate.predict.device = finetune.device();
    evaluate.predict.crop_borders = finetune.crop_borders();
    evaluate.predict.loader_threads = finetune.loader_threads();
    evaluate.predict.max_image_pixels = finetune.max_image_pixels();
    evaluate.gradcam_per_label = config_.gradcam_per_label();
    evaluate.title = absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(), " round ", task.round(),
                                  ": global model vs locally fine-tuned");
    ASSIGN_OR_RETURN(EvaluateResult evaluated, RunEvaluate(evaluate));
    LOG(INFO) << "round " << task.round() << " evaluation: " << evaluated.summary_line;
    report.set_test_cases(evaluated.images);
    *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kA, "global", global.weights_sha256);
    *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kB, "local", tuned->weights_sha256);
    *report.add_comparisons() = ModelComparisonFrom(evaluated.report, "global", "local");
  } else {
    LOG(WARNING) << "the test split is empty: no round evaluation";
  }

  // The adapted model: the run's fine-tuned model with the best validation loss so far.
  ASSIGN_OR_RETURN(std::optional<AdaptedModel> best, db_->BestAdapted(task.run_id()));
  const bool same_round = best && best->round == task.round() && best->attempt == task.attempt();
  if (!best || same_round || validation_loss < best->validation_loss) {
    const fs::path adapted_dir = work / "adapted" / task.run_id();
    RETURN_IF_ERROR(io::MakeDirectories(adapted_dir.string()));
    AdaptedModel adapted{task.run_id(),         task.round(),    task.attempt(),
                         tuned->weights_sha256, validation_loss, (adapted_dir / "model.ckpt").string()};
    RETURN_IF_ERROR(CopyFileAtomically(tuned->checkpoint_path, adapted.path));
    RETURN_IF_ERROR(db_->RecordAdapted(adapted));
    LOG(INFO) << "adapted model of run " << task.run_id() << ": round " << task.round() << " (validation BCE "
              << validation_loss << ")";
  }

  if (!config_.share_metrics()) StripPerformance(&report);
  heartbeat.SetState("reporting", 0.98);
  return client_->ReportMetrics(report);
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
  RETURN_IF_ERROR(CheckCancelled(heartbeat, "the final evaluation", task));
  ASSIGN_OR_RETURN(std::optional<AdaptedModel> adapted, db_->BestAdapted(task.run_id()));
  if (adapted && !fs::exists(adapted->path)) {
    LOG(WARNING) << "adapted model " << adapted->path << " is missing: it is left out of the final evaluation";
    adapted.reset();
  }
  const std::string test_manifest = (reports / "test.csv").string();
  RETURN_IF_ERROR(WriteSplitManifest(site_, data::Split::kTest, test_manifest));

  heartbeat.SetState("evaluating", 0.1);
  auto evaluate = [&](const std::string& a, const std::string& b, const std::string& name,
                      const std::string& title) -> absl::StatusOr<EvaluateResult> {
    EvaluateOptions options;
    options.base_model = a;
    options.model = b;
    options.manifest = test_manifest;
    options.data_root = config_.finetune().data_root();
    options.out_dir = (reports / name).string();
    options.predict.device = config_.finetune().device();
    options.predict.crop_borders = config_.finetune().crop_borders();
    options.predict.loader_threads = config_.finetune().loader_threads();
    options.predict.max_image_pixels = config_.finetune().max_image_pixels();
    options.gradcam_per_label = config_.gradcam_per_label();
    options.title = absl::StrCat("Site ", config_.site_id(), ", run ", task.run_id(), ": ", title);
    return RunEvaluate(options);
  };
  v1::MetricsReport report;
  report.set_run_id(task.run_id());
  report.set_round(0);
  report.set_kind("final");
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
  if (!config_.share_metrics()) StripPerformance(&report);
  heartbeat.SetState("reporting", 0.95);
  RETURN_IF_ERROR(client_->ReportMetrics(report));
  LOG(INFO) << "final evaluation of run " << task.run_id() << " reported; reports in " << reports.string();
  return FinishRun(task.run_id(), "completed");
}

}  // namespace fedtune::agent
