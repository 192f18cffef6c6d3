#include "site_agent/loadgen/load_generator.h"

#include <ATen/ATen.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/fl/encoding.h"
#include "common/fl/model_tensors.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/seed.h"
#include "common/status_macros.h"
#include "site_agent/agent/coordinator_client.h"
#include "site_agent/agent/heartbeater.h"
#include "site_agent/agent/secure_aggregation.h"
#include "site_agent/loadgen/site_credentials.h"

namespace fedtune::loadgen {
namespace {

namespace fs = std::filesystem;

constexpr char kLoadgenVersion[] = "fedtune-loadgen/1";
// How often a dropped-out site asks for a task again while the coordinator still offers the attempt it skipped.
constexpr absl::Duration kDroppedPoll = absl::Seconds(1);
// Slices of the simulated training, so a cancel or Stop is seen promptly.
constexpr absl::Duration kTrainSlice = absl::Milliseconds(100);

bool IsAuthError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnauthenticated || status.code() == absl::StatusCode::kPermissionDenied;
}

double Mb(int64_t bytes) { return static_cast<double>(bytes) / 1e6; }

}  // namespace

struct LoadGenerator::Site {
  int index = 0;
  std::string id;
  int64_t num_samples = 0;
  int variant = 0;
  std::unique_ptr<agent::CoordinatorClient> client;
  net::TlsFiles tls;  // The site's certificate, key and the CA (secure aggregation signs and verifies with them).
  std::string download_dir;
  absl::Duration heartbeat_period;
  std::string run_id;     // The run this site takes part in ("" until its first task).
  int rounds_done = 0;    // TRAIN attempts taken part in.
  bool run_over = false;  // A heartbeat said the run completed.
  std::pair<int, int> last_attempt{-1, -1};
  std::pair<int, int> retry_attempt{-1, -1};  // An attempt whose work failed transiently: work it again.
  std::thread thread;
  absl::Mutex mu;
  std::string state ABSL_GUARDED_BY(mu) = "starting";
  bool done ABSL_GUARDED_BY(mu) = false;

  void SetState(std::string s) {
    absl::MutexLock lock(&mu);
    state = std::move(s);
  }
};

LoadGenerator::LoadGenerator(LoadgenOptions options) : options_(std::move(options)) {}

LoadGenerator::~LoadGenerator() {
  Stop();
  for (auto& site : sites_) {
    if (site->thread.joinable()) site->thread.join();
  }
  sites_.clear();
  if (remove_work_dir_) {
    std::error_code ec;
    fs::remove_all(work_dir_, ec);
    if (ec) LOG(WARNING) << "cannot remove the load generator's work directory " << work_dir_ << ": " << ec.message();
  }
}

absl::StatusOr<std::unique_ptr<LoadGenerator>> LoadGenerator::Create(const LoadgenOptions& options) {
  RETURN_IF_ERROR(ValidateLoadgenOptions(options));
  const absl::Time start = absl::Now();
  std::unique_ptr<LoadGenerator> gen(new LoadGenerator(options));
  if (options.work_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = (fs::path(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") / "fedtune_loadgen_XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return io::ErrnoToStatus(errno, "cannot create the load generator's work directory", pattern);
    }
    gen->work_dir_ = pattern;
    gen->remove_work_dir_ = true;
  } else {
    gen->work_dir_ = options.work_dir;
    RETURN_IF_ERROR(io::MakeDirectories(gen->work_dir_));
  }
  gen->payloads_ =
      std::make_unique<DeltaPayloads>((fs::path(gen->work_dir_) / "payloads").string(), options.delta_value);

  std::string ca_cert = options.ca_cert;
  if (ca_cert.empty()) {
    ca_cert = (fs::path(options.ca_dir.empty() ? options.certs_dir : options.ca_dir) / "ca.pem").string();
  }
  std::vector<std::string> ids;
  for (int i = 0; i < options.sites; ++i) ids.push_back(SiteId(options.site_prefix, i));
  ASSIGN_OR_RETURN(std::vector<SiteCredentials> credentials,
                   EnsureSiteCredentials(ids, options.certs_dir, options.ca_dir, ca_cert));
  int enrolled = 0;
  for (int i = 0; i < options.sites; ++i) {
    auto site = std::make_unique<Site>();
    site->index = i;
    site->id = ids[i];
    site->num_samples = SiteNumSamples(i);
    site->variant = SiteVariant(i, options.variants);
    site->download_dir = (fs::path(gen->work_dir_) / "sites" / site->id).string();
    site->heartbeat_period = absl::Seconds(options.heartbeat_seconds);
    enrolled += credentials[i].enrolled_now ? 1 : 0;
    agent::ClientOptions client;
    client.address = options.coordinator;
    client.tls = credentials[i].files;
    site->tls = credentials[i].files;
    client.server_name = options.server_name;
    client.rpc_timeout = absl::Seconds(options.rpc_timeout_seconds);
    client.retry.min_backoff = absl::Milliseconds(200);
    client.retry.max_backoff = absl::Seconds(5);
    LoadGenerator* self = gen.get();
    client.sleep = [self](absl::Duration d) { self->Wait(d); };
    client.seed = MixSeed(options.seed ^ (static_cast<uint64_t>(i) << 20)) | 1;
    ASSIGN_OR_RETURN(site->client, agent::CoordinatorClient::Create(client));
    gen->sites_.push_back(std::move(site));
  }
  if (enrolled > 0) LOG(INFO) << "enrolled " << enrolled << " site(s) with the CA in " << options.ca_dir;
  gen->setup_ = absl::Now() - start;
  return gen;
}

bool LoadGenerator::Wait(absl::Duration d) { return !stop_.WaitForNotificationWithTimeout(d); }

void LoadGenerator::Stop() {
  absl::MutexLock lock(&mu_);
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

bool LoadGenerator::AwaitReady(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const int n = static_cast<int>(sites_.size());
  auto ready_or_stopped = [this, n]()
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return approved_ >= n || stop_.HasBeenNotified(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready_or_stopped), timeout);
  return approved_ >= n;
}

RoundStats& LoadGenerator::StatsLocked(int round, int attempt) {
  RoundStats& stats = rounds_[{round, attempt}];
  stats.round = round;
  stats.attempt = attempt;
  return stats;
}

void LoadGenerator::Fail(const Site& site, const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (failure_.ok()) failure_ = absl::Status(status.code(), absl::StrCat("site ", site.id, ": ", status.message()));
  }
  Stop();
}

LoadReport LoadGenerator::Run() {
  const absl::Time start = absl::Now();
  for (auto& site : sites_) {
    Site* s = site.get();
    s->thread = std::thread([this, s] { SiteMain(*s); });
  }
  const int n = static_cast<int>(sites_.size());
  {
    absl::MutexLock lock(&mu_);
    auto finished = [this, n]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ >= n || stop_.HasBeenNotified(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&finished), absl::Seconds(options_.timeout_seconds)) && failure_.ok()) {
      std::vector<std::string> waiting;
      for (auto& site : sites_) {
        absl::MutexLock site_lock(&site->mu);
        if (!site->done && waiting.size() < 10) waiting.push_back(absl::StrCat(site->id, " (", site->state, ")"));
      }
      failure_ = absl::DeadlineExceededError(
          absl::StrCat("timed out after ", options_.timeout_seconds, " s (--timeout) with ", n - finished_, " of ", n,
                       " sites not finished: ", absl::StrJoin(waiting, ", "), n - finished_ > 10 ? ", ..." : "",
                       approved_ < n ? absl::StrCat("; only ", approved_, " sites were approved") : "",
                       run_id_.empty() ? "; no site got a task (was a run started?)" : ""));
    }
  }
  Stop();
  for (auto& site : sites_) {
    if (site->thread.joinable()) site->thread.join();
  }

  LoadReport report;
  absl::MutexLock lock(&mu_);
  report.status = failure_;
  if (report.status.ok() && finished_ < n) report.status = absl::CancelledError("stopped before every site finished");
  report.sites = n;
  report.run_id = run_id_;
  report.encoding = encoding_;
  for (const auto& [key, stats] : rounds_) {
    report.rounds.push_back(stats);
    report.bytes_down += stats.bytes_down;
    report.bytes_up += stats.bytes_up;
  }
  report.evaluations = evaluations_;
  report.retried_tasks = retried_tasks_;
  report.evaluation_bytes_down = evaluation_bytes_down_;
  report.bytes_down += evaluation_bytes_down_;
  report.setup = setup_;
  report.ready = ready_at_ == absl::InfiniteFuture() ? absl::InfiniteDuration() : ready_at_ - start;
  report.wall = absl::Now() - start;
  if (used_encoding_.has_value()) {
    for (int v = 0; v < options_.variants; ++v) {
      absl::StatusOr<DeltaPayload> payload = payloads_->Get(*used_encoding_, used_topk_, v);
      if (!payload.ok()) {
        LOG(WARNING) << "delta variant " << v << ": " << payload.status();
        break;
      }
      report.payloads.push_back(*payload);
    }
    if (!report.payloads.empty())
      report.payload_bytes = report.payloads[std::min<size_t>(1, report.payloads.size() - 1)].bytes;
  }
  return report;
}

void LoadGenerator::SiteMain(Site& site) {
  const absl::Status status = RunSite(site);
  {
    absl::MutexLock lock(&site.mu);
    site.done = status.ok();
    site.state = status.ok() ? "finished" : absl::StrCat("stopped: ", status.message().substr(0, 120));
  }
  if (status.ok()) {
    absl::MutexLock lock(&mu_);
    ++finished_;
    return;
  }
  if (stop_.HasBeenNotified() && status.code() == absl::StatusCode::kCancelled) return;
  Fail(site, status);
}

absl::Status LoadGenerator::SayHello(Site& site) {
  site.SetState("saying hello");
  v1::HelloRequest hello;
  v1::Capabilities* caps = hello.mutable_capabilities();
  caps->set_agent_version(kLoadgenVersion);
  caps->set_device("simulated");
  caps->set_threads(1);
  fl::SetSupportedEncodings(caps);
  v1::DatasetSummary* dataset = hello.mutable_dataset();
  dataset->set_images(site.num_samples);
  dataset->set_studies(site.num_samples);
  dataset->set_patients(site.num_samples);
  dataset->set_train_images(site.num_samples);
  agent::RetryPolicy forever;
  forever.min_backoff = absl::Milliseconds(200);
  forever.max_backoff = absl::Seconds(5);
  forever.max_attempts = std::numeric_limits<int>::max();
  forever.max_elapsed = absl::InfiniteDuration();
  agent::Backoff backoff(
      forever, [this](absl::Duration d) { Wait(d); }, MixSeed(options_.seed + site.index));
  bool told = false;
  while (true) {
    if (stop_.HasBeenNotified()) return absl::CancelledError("stopped");
    absl::StatusOr<v1::HelloResponse> response = site.client->Hello(hello);
    if (!response.ok()) {
      if (!agent::IsRetryable(response.status())) {
        return absl::Status(
            response.status().code(),
            absl::StrCat(response.status().message(),
                         IsAuthError(response.status()) ? " (is the site enrolled with the coordinator's CA?)" : ""));
      }
      LOG(WARNING) << "site " << site.id << ": " << response.status() << "; saying hello again in about "
                   << backoff.NextDelay();
      RETURN_IF_ERROR(backoff.Wait(response.status()));
      continue;
    }
    ASSIGN_OR_RETURN(const federation::SiteStatus status, federation::GetStatus(*response));
    if (status == federation::SiteStatus::kApproved) {
      if (response->heartbeat_seconds() > 0) {
        site.heartbeat_period = std::min(site.heartbeat_period, absl::Seconds(response->heartbeat_seconds()));
      }
      if (response->chunk_bytes() > 0) site.client->set_chunk_bytes(response->chunk_bytes());
      return absl::OkStatus();
    }
    if (status != federation::SiteStatus::kPending) {
      return absl::PermissionDeniedError(
          absl::StrCat("coordinator ", options_.coordinator, " says the site is \"", federation::Text(status), "\""));
    }
    if (!told && site.index == 0) {
      LOG(WARNING) << "the simulated sites wait for approval: `fedtune sites approve " << site.id
                   << "` for each, or auto_approve: true in the coordinator's config";
    }
    told = true;
    site.SetState("pending approval");
    RETURN_IF_ERROR(backoff.Wait(absl::UnavailableError("pending approval")));
  }
}

absl::Status LoadGenerator::RunSite(Site& site) {
  RETURN_IF_ERROR(SayHello(site));
  bool all_ready = false;
  {
    absl::MutexLock lock(&mu_);
    all_ready = ++approved_ == static_cast<int>(sites_.size());
    if (all_ready) ready_at_ = absl::Now();
  }
  if (all_ready) {
    LOG(INFO) << "all " << sites_.size() << " simulated sites are approved";
    if (!options_.ready_file.empty()) {
      RETURN_IF_ERROR(io::WriteFileAtomically(options_.ready_file, absl::StrCat(sites_.size(), "\n")));
    }
  }
  agent::RetryPolicy forever;
  forever.min_backoff = absl::Milliseconds(200);
  forever.max_backoff = absl::Seconds(5);
  forever.max_attempts = std::numeric_limits<int>::max();
  forever.max_elapsed = absl::InfiniteDuration();
  agent::Backoff backoff(
      forever, [this](absl::Duration d) { Wait(d); }, MixSeed(options_.seed * 31 + site.index));
  while (!stop_.HasBeenNotified()) {
    site.SetState(site.run_id.empty() ? "waiting for a task (no run yet)"
                                      : absl::StrCat("waiting for a task of run ", site.run_id, " after ",
                                                     site.rounds_done, " round(s)"));
    absl::StatusOr<v1::Task> task = site.client->GetTask(options_.task_wait_seconds);
    if (!task.ok()) {
      if (IsAuthError(task.status())) return task.status();
      LOG(WARNING) << "site " << site.id << ": " << task.status() << "; polling again in about " << backoff.NextDelay();
      if (task.status().code() == absl::StatusCode::kFailedPrecondition) RETURN_IF_ERROR(SayHello(site));
      RETURN_IF_ERROR(backoff.Wait(task.status()));
      continue;
    }
    backoff.Reset();
    if (!site.run_id.empty() &&
        std::find(task->ended_runs().begin(), task->ended_runs().end(), site.run_id) != task->ended_runs().end()) {
      return absl::OkStatus();  // The run ended (completed, or this site's rounds are over).
    }
    if (task->kind() == v1::Task::NONE) continue;
    if (!site.run_id.empty() && task->run_id() != site.run_id) {
      LOG(WARNING) << "site " << site.id << ": a task of run " << task->run_id() << " while run " << site.run_id
                   << " has not ended: this site's run is over";
      return absl::OkStatus();
    }
    if (site.run_id.empty()) {
      site.run_id = task->run_id();
      absl::MutexLock lock(&mu_);
      if (run_id_.empty()) run_id_ = task->run_id();
    }
    if (task->kind() == v1::Task::EVALUATE) {
      const absl::Status evaluated = RunEvaluate(site, *task);
      if (evaluated.ok() || !RetryTask(site, evaluated)) return evaluated;
      RETURN_IF_ERROR(backoff.Wait(evaluated));
      continue;
    }
    if (task->kind() != v1::Task::TRAIN) {
      return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task->kind()));
    }
    const std::pair<int, int> attempt{task->round(), task->attempt()};
    const bool again = attempt == site.retry_attempt;
    if (attempt == site.last_attempt && !again) {  // Dropped out of this attempt, which is still open.
      if (!Wait(kDroppedPoll)) break;
      continue;
    }
    site.last_attempt = attempt;
    const absl::Status trained = RunTrain(site, *task, again);
    if (!trained.ok() && RetryTask(site, trained)) {
      site.retry_attempt = attempt;  // The coordinator offers the task again: work it again, as the agent does.
      RETURN_IF_ERROR(backoff.Wait(trained));
      continue;
    }
    RETURN_IF_ERROR(trained);
    site.retry_attempt = {-1, -1};
    ++site.rounds_done;
    if (site.run_over) return absl::OkStatus();
    if (options_.rounds > 0 && site.rounds_done >= options_.rounds) return absl::OkStatus();
  }
  return absl::CancelledError("stopped");
}

absl::StatusOr<std::string> LoadGenerator::Download(Site& site, const std::string& digest, int64_t bytes,
                                                    int64_t* moved, const std::function<bool()>& cancelled) {
  const int64_t before = site.client->bytes_down();
  absl::StatusOr<std::string> path = site.client->DownloadModel(digest, bytes, site.download_dir, cancelled);
  *moved += site.client->bytes_down() - before;
  return path;
}

absl::Status LoadGenerator::RunEndedStatus(Site& site, bool run_ended, const std::string& reason) {
  if (!run_ended) return absl::OkStatus();
  // The coordinator's reason names the run's state ("run R is completed"); only a completed run is the normal end.
  if (absl::StrContains(reason, federation::Text(federation::RunState::kCompleted))) {
    site.run_over = true;
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat("run ", site.run_id, " ended at the coordinator: ", reason));
}

bool LoadGenerator::RetryTask(const Site& site, const absl::Status& status) {
  if (!agent::IsRetryable(status) || stop_.HasBeenNotified()) return false;
  LOG(WARNING) << "site " << site.id << ": " << status << "; the task will be worked again";
  absl::MutexLock lock(&mu_);
  ++retried_tasks_;
  return true;
}

absl::Status LoadGenerator::RunTrain(Site& site, const v1::Task& task, bool again) {
  const SiteRole role = RoleInRound(options_, site.index, task.round(), task.attempt());
  if (!again) {
    absl::MutexLock lock(&mu_);
    RoundStats& stats = StatsLocked(task.round(), task.attempt());
    if (stats.tasks == 0) {
      LOG(INFO) << "run " << task.run_id() << " round " << task.round() << " attempt " << task.attempt()
                << ": the first site took its task";
    }
    ++stats.tasks;
    stats.first_task = std::min(stats.first_task, absl::Now());
    stats.dropped += role == SiteRole::kDropOut ? 1 : 0;
    stats.stragglers += role == SiteRole::kStraggle ? 1 : 0;
  }
  const std::string what = absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt());
  if (role == SiteRole::kDropOut) {
    site.SetState(absl::StrCat("dropped out of ", what));
    return absl::OkStatus();
  }
  fl::Encoding encoding;
  if (options_.encoding.has_value()) {
    encoding = *options_.encoding;
  } else {
    ASSIGN_OR_RETURN(encoding, fl::GetEncoding(task.plan()));
  }
  const double topk = options_.topk_fraction > 0        ? options_.topk_fraction
                      : task.plan().topk_fraction() > 0 ? task.plan().topk_fraction()
                                                        : 0.01;
  int64_t down = 0;
  int64_t up = 0;
  bool cancelled_task = false;
  absl::Status status;
  {
    agent::Heartbeater heartbeat(site.client.get(), task.run_id(), task.round(), site.heartbeat_period, "downloading");
    const std::function<bool()> cancelled = [&heartbeat, this] {
      return heartbeat.cancelled() || stop_.HasBeenNotified();
    };
    status = [&]() -> absl::Status {
      site.SetState(absl::StrCat("downloading the model of ", what));
      ASSIGN_OR_RETURN(std::string model, Download(site, task.model_digest(), task.model_bytes(), &down, cancelled));
      absl::Status learnt = payloads_->LearnSchema(model);
      // Secure aggregation: the site joins the session before its (simulated) training, as the agent does, and masks
      // its variant's delta (every floating element variant * delta_value, as the shared payload files).
      std::unique_ptr<agent::SiteSecAggSession> secagg;
      fl::TensorMap secagg_delta;
      const std::string round_dir =
          (fs::path(site.download_dir) / absl::StrCat("r", task.round(), "-a", task.attempt())).string();
      if (learnt.ok() && task.plan().secure_aggregation()) {
        learnt = [&]() -> absl::Status {
          RETURN_IF_ERROR(io::MakeDirectories(round_dir));
          ASSIGN_OR_RETURN(model::Checkpoint global, model::LoadCheckpoint(model));
          const fl::TensorMap shared = fl::CheckpointTensors(global);
          agent::SecAggSite secagg_site;
          secagg_site.client = site.client.get();
          secagg_site.site_id = site.id;
          secagg_site.site_key_path = site.tls.key;
          secagg_site.ca_cert_path = site.tls.ca;
          secagg_site.round_dir = round_dir;
          secagg_site.cancelled = cancelled;
          site.SetState(absl::StrCat("secure aggregation keys and shares of ", what));
          ASSIGN_OR_RETURN(secagg, agent::SiteSecAggSession::Begin(secagg_site, task, shared, site.num_samples));
          const double value = site.variant * options_.delta_value;
          for (const auto& [name, t] : shared) {
            if (t.is_floating_point()) secagg_delta[name] = at::full_like(t, value);
          }
          return absl::OkStatus();
        }();
      }
      std::error_code ec;
      fs::remove(model, ec);
      RETURN_IF_ERROR(learnt);
      site.SetState(absl::StrCat("training (simulated) in ", what));
      heartbeat.SetState("training (simulated)", 0.1);
      absl::Duration left = absl::Seconds(options_.train_seconds);
      if (role == SiteRole::kStraggle) left += absl::Seconds(options_.straggler_delay_seconds);
      while (left > absl::ZeroDuration() && !heartbeat.cancelled()) {
        const absl::Duration slice = std::min(left, kTrainSlice);
        if (!Wait(slice)) return absl::CancelledError("stopped");
        left -= slice;
      }
      if (heartbeat.cancelled()) {
        cancelled_task = true;
        return absl::OkStatus();
      }
      DeltaPayload payload;
      if (secagg != nullptr) {
        site.SetState(absl::StrCat("masking the update of ", what));
        ASSIGN_OR_RETURN(agent::MaskedUpdate masked, secagg->MaskUpdate(secagg_delta));
        secagg_delta.clear();
        const std::string bytes = masked.bundle.SerializeAsString();
        payload.path = (fs::path(round_dir) / "masked.bin").string();
        RETURN_IF_ERROR(io::WriteFileAtomically(payload.path, bytes));
        payload.sha256 = io::Sha256Hex(bytes);
        payload.bytes = static_cast<int64_t>(bytes.size());
      } else {
        ASSIGN_OR_RETURN(payload, payloads_->Get(encoding, topk, site.variant));
      }
      {
        absl::MutexLock lock(&mu_);
        if (!used_encoding_.has_value()) {
          used_encoding_ = encoding;
          used_topk_ = topk;
          encoding_ = fl::EncodingName(encoding);
        }
      }
      site.SetState(absl::StrCat("uploading in ", what));
      heartbeat.SetState("uploading", 0.85);
      agent::UploadRequest upload;
      upload.run_id = task.run_id();
      upload.round = task.round();
      upload.path = payload.path;
      upload.sha256 = payload.sha256;
      upload.num_samples = site.num_samples;
      upload.encoding = encoding;
      upload.train_loss = 0.5;
      upload.validation_loss = 0.5;
      const int64_t up_before = site.client->bytes_up();
      const absl::Time began = absl::Now();
      absl::StatusOr<v1::UploadResponse> uploaded = site.client->UploadUpdate(upload, cancelled);
      const absl::Duration took = absl::Now() - began;
      up = site.client->bytes_up() - up_before;
      if (!uploaded.ok()) {
        if (uploaded.status().code() == absl::StatusCode::kFailedPrecondition) {
          LOG(WARNING) << "site " << site.id << ": " << uploaded.status();
          absl::MutexLock lock(&mu_);
          ++StatsLocked(task.round(), task.attempt()).refused;
          return absl::OkStatus();
        }
        if (uploaded.status().code() == absl::StatusCode::kCancelled && heartbeat.cancelled()) {
          cancelled_task = true;
          return absl::OkStatus();
        }
        return uploaded.status();
      }
      {
        absl::MutexLock lock(&mu_);
        RoundStats& stats = StatsLocked(task.round(), task.attempt());
        ++stats.uploads;
        stats.last_upload = std::max(stats.last_upload, absl::Now());
        stats.upload_seconds += absl::ToDoubleSeconds(took);
        stats.upload_bytes += payload.bytes;
      }
      if (secagg != nullptr) {
        site.SetState(absl::StrCat("unmasking ", what));
        RETURN_IF_ERROR(secagg->Unmask());
        std::error_code removed;
        fs::remove(payload.path, removed);
      }
      site.SetState(absl::StrCat("reporting round metrics of ", what));
      heartbeat.SetState("reporting", 0.98);
      v1::MetricsReport report;
      report.set_run_id(task.run_id());
      report.set_round(task.round());
      report.set_kind("round");
      report.set_train_loss(0.5);
      report.set_validation_loss(0.5);
      RETURN_IF_ERROR(site.client->ReportMetrics(report));
      heartbeat.SetState("done", 1.0);
      return absl::OkStatus();
    }();
    if (status.code() == absl::StatusCode::kCancelled && heartbeat.cancelled()) {
      cancelled_task = true;
      status = absl::OkStatus();
    }
    if (cancelled_task) {
      LOG(WARNING) << "site " << site.id << ": " << what << " cancelled by the coordinator: " << heartbeat.reason();
      status = RunEndedStatus(site, heartbeat.run_ended(), heartbeat.reason());
    }
  }
  absl::MutexLock lock(&mu_);
  RoundStats& stats = StatsLocked(task.round(), task.attempt());
  stats.bytes_down += down;
  stats.bytes_up += up;
  stats.cancelled += cancelled_task ? 1 : 0;
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
  return absl::OkStatus();
}

absl::Status LoadGenerator::RunEvaluate(Site& site, const v1::Task& task) {
  const std::string what = absl::StrCat("final evaluation of run ", task.run_id());
  site.SetState(what);
  int64_t down = 0;
  absl::Status status;
  {
    agent::Heartbeater heartbeat(site.client.get(), task.run_id(), 0, site.heartbeat_period, "downloading");
    const std::function<bool()> cancelled = [&heartbeat, this] {
      return heartbeat.cancelled() || stop_.HasBeenNotified();
    };
    status = [&]() -> absl::Status {
      for (const auto& [digest, bytes] : {std::make_pair(task.base_model_digest(), task.base_model_bytes()),
                                          std::make_pair(task.model_digest(), task.model_bytes())}) {
        ASSIGN_OR_RETURN(std::string model, Download(site, digest, bytes, &down, cancelled));
        std::error_code ec;
        fs::remove(model, ec);
      }
      heartbeat.SetState("reporting", 0.95);
      v1::MetricsReport report;
      report.set_run_id(task.run_id());
      report.set_round(0);
      report.set_kind("final");
      RETURN_IF_ERROR(site.client->ReportMetrics(report));
      heartbeat.SetState("done", 1.0);
      return absl::OkStatus();
    }();
    if (!status.ok() && heartbeat.cancelled()) {
      LOG(WARNING) << "site " << site.id << ": " << what << " cancelled by the coordinator: " << heartbeat.reason();
      status = RunEndedStatus(site, heartbeat.run_ended(), heartbeat.reason());
      if (status.ok()) return status;  // The evaluation ended (its deadline): the site's work is over.
    }
  }
  absl::MutexLock lock(&mu_);
  evaluation_bytes_down_ += down;
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
  ++evaluations_;
  return absl::OkStatus();
}

std::string FormatReport(const LoadReport& report, const LoadgenOptions& options) {
  std::string out = absl::StrFormat(
      "fedtune-loadgen: %d sites against %s, run %s, %s payload %.2f MB per upload, %d variant(s) of %g\n",
      report.sites, options.coordinator, report.run_id.empty() ? "(none)" : report.run_id,
      report.encoding.empty() ? "no" : report.encoding, Mb(report.payload_bytes), options.variants,
      options.delta_value);
  absl::StrAppend(&out, absl::StrFormat("%5s %7s %6s %7s %7s %5s %7s %9s %10s %10s %8s %11s\n", "round", "attempt",
                                        "tasks", "uploads", "dropped", "late", "refused", "cancelled", "MB down",
                                        "MB up", "wall s", "upload MB/s"));
  int uploads = 0;
  for (const RoundStats& r : report.rounds) {
    uploads += r.uploads;
    const double wall = r.uploads > 0 ? absl::ToDoubleSeconds(r.last_upload - r.first_task) : 0.0;
    const double rate = r.upload_seconds > 0 ? Mb(r.upload_bytes) / r.upload_seconds : 0.0;
    absl::StrAppend(&out, absl::StrFormat("%5d %7d %6d %7d %7d %5d %7d %9d %10.2f %10.2f %8.2f %11.1f\n", r.round,
                                          r.attempt, r.tasks, r.uploads, r.dropped, r.stragglers, r.refused,
                                          r.cancelled, Mb(r.bytes_down), Mb(r.bytes_up), wall, rate));
  }
  absl::StrAppend(&out, absl::StrFormat("evaluation: %d final reports, %.2f MB down\n", report.evaluations,
                                        Mb(report.evaluation_bytes_down)));
  absl::StrAppend(&out,
                  absl::StrFormat("total: %d uploads accepted, %.2f MB down, %.2f MB up, %d task(s) worked again after "
                                  "transient errors; set-up %.1f s, all sites approved after %s, wall %.1f s\n",
                                  uploads, Mb(report.bytes_down), Mb(report.bytes_up), report.retried_tasks,
                                  absl::ToDoubleSeconds(report.setup),
                                  report.ready == absl::InfiniteDuration()
                                      ? std::string("(never)")
                                      : absl::StrFormat("%.1f s", absl::ToDoubleSeconds(report.ready)),
                                  absl::ToDoubleSeconds(report.wall)));
  return out;
}

}  // namespace fedtune::loadgen
