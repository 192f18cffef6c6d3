#include "coordinator/round_transitions.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/fl/bundle_file.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/io/file_util.h"
#include "common/secagg/prg.h"
#include "common/status_macros.h"
#include "coordinator/run_config_privacy.h"

namespace fedtune::coordinator {

using federation::RoundState;
using federation::RunState;
namespace {

std::string Iso8601(absl::Time t) { return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone()); }

int64_t DeadlineAfter(const ActiveRun& a, int64_t now_ms) {
  return now_ms + int64_t{a.run.config.round_deadline_seconds()} * 1000;
}

// The final evaluation's deadline: one round's, plus, with the local-only baseline, one round's per local_epochs of
// its training (the sites fine-tune the open-source model during the evaluation).
int64_t EvaluationDeadlineAfter(const ActiveRun& a, int64_t now_ms) {
  const v1::RunConfig& c = a.run.config;
  int64_t rounds = 1;
  if (c.local_only_baseline()) {
    const int64_t epochs = c.local_only_epochs() > 0 ? c.local_only_epochs() : int64_t{c.rounds()} * c.local_epochs();
    const int64_t per_round = std::max(1, c.local_epochs());
    rounds += (epochs + per_round - 1) / per_round;
  }
  return now_ms + rounds * int64_t{c.round_deadline_seconds()} * 1000;
}

// FedAdam's server step on the aggregated `step` when the run uses it (its state written to *adam_path).
absl::StatusOr<fl::TensorMap> AdamStep(ActiveRun& a, fl::TensorMap step, const std::string& state_dir,
                                       std::string* adam_path) {
  if (!a.fedadam) return step;
  RETURN_IF_ERROR(a.fedadam->StepInPlace(step));  // The step is the aggregator's own memory: no copy needed.
  *adam_path = absl::StrCat(state_dir, "/fedadam/", a.run.run_id, "-round-", a.round.round, ".bundle");
  // Tensor by tensor from the optimizer's own tensors: no copy of m and v, nor of their encoding.
  RETURN_IF_ERROR(fl::WriteTensorBundleFile(*adam_path, a.fedadam->StateView()));
  return step;
}

// Saves the next global model: the current one plus `step` (the server's step over the shared tensors).
absl::StatusOr<AggregatedRound> SaveNextGlobal(ActiveRun& a, fl::TensorMap next_global, AggregatedRound out,
                                               const std::string& description, BlobStore* blobs, int64_t now_ms) {
  RETURN_IF_ERROR(fl::ApplyDeltaInPlace(*a.global, next_global));
  // The step covers the shared tensors (a.global). Those a personalization keeps at the sites (FEDBN, SILOBN) stay as
  // the current global model has them: the base model's, round after round.
  fl::TensorMap tensors = fl::CheckpointTensors(a.global_checkpoint);
  for (auto& [name, tensor] : next_global) tensors[name] = std::move(tensor);
  next_global.clear();
  ASSIGN_OR_RETURN(out.checkpoint, fl::CheckpointWithTensors(a.global_checkpoint, tensors));
  tensors.clear();  // The checkpoint shares its tensors.
  model::Provenance& provenance = out.checkpoint.metadata.provenance;
  provenance.parent_digest = a.global_checkpoint.weights_sha256;
  provenance.source =
      absl::StrCat("fedtune federation run ", a.run.run_id, " round ", a.round.round, " (", description, ")");
  provenance.epochs = a.run.config.local_epochs();
  provenance.created_at = Iso8601(absl::FromUnixMillis(now_ms));
  const std::string temp = blobs->TempPath();
  absl::StatusOr<std::string> saved = model::SaveCheckpoint(&out.checkpoint, temp);
  if (!saved.ok()) {
    std::error_code ec;
    std::filesystem::remove(temp, ec);
    return saved.status();
  }
  ASSIGN_OR_RETURN(out.digest, blobs->Adopt(temp));
  ASSIGN_OR_RETURN(out.bytes, blobs->Size(out.digest));
  out.path = blobs->PathOf(out.digest);
  return out;
}

// A transition that ends the run in `state` (completed, failed, aborted) with `message`.
RunTransition EndRun(const ActiveRun& a, RunState state, std::string message, int64_t now_ms) {
  RunTransition t;
  t.run = a.run;
  t.run.state = state;
  t.run.finished_ms = now_ms;
  t.run.message = std::move(message);
  return t;
}

}  // namespace

absl::Status AddGaussianNoise(fl::TensorMap& step, double stddev) {
  if (!std::isfinite(stddev) || stddev < 0) {
    return absl::InvalidArgumentError(absl::StrCat("noise standard deviation ", stddev, " must be finite and >= 0"));
  }
  if (stddev == 0) return absl::OkStatus();
  try {
    for (auto& [name, tensor] : step) {
      if (!fl::IsFloating(tensor)) {
        // Integer tensors (BatchNorm's counters) would carry the largest site's batch count without noise: under
        // DP-FedAvg they are not aggregated (zero delta; the global model keeps its own), as under secure aggregation.
        tensor.zero_();
        continue;
      }
      // Secret noise (a fresh RAND_bytes key, AES-128-CTR, Box-Muller), added in the tensor's dtype.
      ASSIGN_OR_RETURN(std::vector<double> values, secagg::SecureStandardNormals(tensor.numel()));
      at::Tensor noise = at::from_blob(values.data(), tensor.sizes(), at::TensorOptions().dtype(at::kDouble)) * stddev;
      tensor.add_(noise.to(tensor.scalar_type()));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("adding differential privacy noise: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

double DpFedAvgNoiseStddev(const v1::RunConfig& config, int64_t updates) {
  return config.dp_noise_multiplier() * config.dp_clip_norm() / static_cast<double>(std::max<int64_t>(1, updates));
}

absl::StatusOr<AggregatedRound> AggregateRound(ActiveRun& a, BlobStore* blobs, const std::string& state_dir,
                                               int64_t now_ms) {
  AggregatedRound out;
  // The step becomes the next global model in place: the round's close holds the global model, the aggregator,
  // one more model and the checkpoint writer's buffer, not a step and a next model besides. The aggregator's own
  // memory becomes the step (FedAvg): it is spent afterwards; a close that fails rebuilds it.
  ASSIGN_OR_RETURN(fl::TensorMap step, a.aggregator->TakeResult());
  std::string description = a.aggregator->Describe();
  const int64_t updates = a.aggregator->num_updates();
  if (a.central_dp_fedavg()) {
    const double stddev = DpFedAvgNoiseStddev(a.run.config, updates);
    RETURN_IF_ERROR(AddGaussianNoise(step, stddev));
    description = absl::StrCat(description, ", dp-fedavg (clip ", a.run.config.dp_clip_norm(), ", noise multiplier ",
                               a.run.config.dp_noise_multiplier(), ": noise std ", stddev, " on the mean)");
  }
  ASSIGN_OR_RETURN(fl::TensorMap next_global, AdamStep(a, std::move(step), state_dir, &out.fedadam_state_path));
  // Under DP-FedAvg the aggregator's weights are 1 per update, not samples.
  const std::string weights = a.run.config.dp() == kDpFedAvg ? std::string("uniform weights")
                                                             : absl::StrCat(a.aggregator->total_samples(), " samples");
  out.summary = absl::StrCat(updates, " update(s), ", weights, ": ", description);
  return SaveNextGlobal(a, std::move(next_global), std::move(out),
                        absl::StrCat(description, ", ", updates, " sites, ", weights), blobs, now_ms);
}

absl::StatusOr<AggregatedRound> AggregateSecAggRound(ActiveRun& a, SecAggStep step, BlobStore* blobs,
                                                     const std::string& state_dir, int64_t now_ms) {
  for (const auto& [name, tensor] : step.mean) {
    auto it = a.global->find(name);
    if (it == a.global->end() || !it->second.sizes().equals(tensor.sizes())) {
      return absl::InvalidArgumentError(
          absl::StrCat("secure aggregation's sum has tensor '", name, "' that the global model does not have"));
    }
  }
  // Integer tensors (BatchNorm's num_batches_tracked) are not aggregated under secure aggregation: zero deltas.
  for (const auto& [name, tensor] : *a.global) {
    if (step.mean.count(name) == 0) step.mean[name] = at::zeros_like(tensor);
  }
  for (auto& [name, tensor] : step.mean) {
    const at::Tensor& g = a.global->at(name);
    if (tensor.scalar_type() != g.scalar_type()) tensor = tensor.to(g.scalar_type());
  }
  AggregatedRound out;
  ASSIGN_OR_RETURN(fl::TensorMap next_global, AdamStep(a, std::move(step.mean), state_dir, &out.fedadam_state_path));
  out.summary = absl::StrCat(step.updates, " update(s), ", step.samples, " samples: ", step.description);
  return SaveNextGlobal(a, std::move(next_global), std::move(out),
                        absl::StrCat(step.description, ", ", step.updates, " sites, ", step.samples, " samples"), blobs,
                        now_ms);
}

RunTransition CloseRoundTransition(const ActiveRun& a, const AggregatedRound& result, int64_t now_ms) {
  RunTransition t;
  t.run = a.run;
  if (a.fedadam) {
    t.run.fedadam_state_path = result.fedadam_state_path;
    t.run.fedadam_rounds = a.fedadam->rounds();
  }
  RoundRecord finished = a.round;
  finished.state = RoundState::kClosed;
  finished.result_digest = result.digest;
  finished.closed_ms = now_ms;
  finished.message = result.summary;
  t.finish_round = finished;
  ModelVersion version;
  version.digest = result.digest;
  version.parent_digest = a.round.model_digest;
  version.path = result.path;
  version.run_id = a.run.run_id;
  version.round = a.round.round;
  version.bytes = result.bytes;
  version.created_ms = now_ms;
  t.new_model = version;
  if (a.round.round < a.run.config.rounds()) {
    RoundRecord next;
    next.run_id = a.run.run_id;
    next.round = a.round.round + 1;
    next.attempt = 1;
    next.state = RoundState::kOpen;
    next.model_digest = result.digest;
    next.opened_ms = now_ms;
    next.deadline_ms = DeadlineAfter(a, now_ms);
    t.open_round = next;
    t.run.current_round = next.round;
    return t;
  }
  t.run.final_model_digest = result.digest;
  if (a.run.config.final_evaluation()) {
    t.run.state = RunState::kEvaluating;
    t.run.evaluation_deadline_ms = EvaluationDeadlineAfter(a, now_ms);
  } else {
    t.run.state = RunState::kCompleted;
    t.run.finished_ms = now_ms;
    t.run.message = absl::StrCat("completed ", a.run.config.rounds(), " round(s)");
  }
  return t;
}

RunTransition FailAttemptTransition(const ActiveRun& a, int64_t now_ms, const std::string& why) {
  RunTransition t;
  t.run = a.run;
  RoundRecord failed = a.round;
  failed.state = RoundState::kFailed;
  failed.closed_ms = now_ms;
  failed.message = !why.empty() ? why
                                : absl::StrCat("deadline passed with ", a.accepted.size(),
                                               " accepted update(s), min_sites is ", a.run.config.min_sites());
  t.finish_round = failed;
  if (a.round.attempt < a.run.config.max_round_attempts()) {
    RoundRecord next = a.round;
    next.attempt = a.round.attempt + 1;
    next.state = RoundState::kOpen;
    next.result_digest.clear();
    next.opened_ms = now_ms;
    next.closed_ms = 0;
    next.message.clear();
    next.deadline_ms = DeadlineAfter(a, now_ms);
    t.open_round = next;
  } else {
    t.run.state = RunState::kFailed;
    t.run.finished_ms = now_ms;
    t.run.message = absl::StrCat("round ", a.round.round, " failed ", a.round.attempt, " time(s): ", failed.message);
  }
  return t;
}

RunTransition FinishEvaluationTransition(const ActiveRun& a, const std::string& message, int64_t now_ms) {
  return EndRun(a, RunState::kCompleted,
                absl::StrCat("completed ", a.run.config.rounds(), " round(s); final evaluation: ", message, " (",
                             a.finals.size(), " of ", a.run.sites.size(), " sites)"),
                now_ms);
}

RunTransition AbortTransition(const ActiveRun& a, const std::string& reason, int64_t now_ms) {
  RunTransition t = EndRun(a, RunState::kAborted,
                           reason.empty() ? "aborted by the operator" : absl::StrCat("aborted: ", reason), now_ms);
  if (a.run.state == RunState::kRunning) {
    RoundRecord r = a.round;
    r.state = RoundState::kAborted;
    r.closed_ms = now_ms;
    r.message = t.run.message;
    t.finish_round = r;
  }
  return t;
}

}  // namespace fedtune::coordinator
