#include "coordinator/active_run.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/federation/states.h"
#include "common/fl/bundle_file.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/run_config_privacy.h"

namespace fedtune::coordinator {

using federation::RunState;
namespace {

fl::AggregatorOptions AggregatorOptionsFor(const v1::RunConfig& config) {
  fl::AggregatorOptions options;
  const std::string& agg = config.aggregation();
  if (agg == "trimmed_mean") {
    options.method = fl::AggregationMethod::kTrimmedMean;
  } else if (agg == "median") {
    options.method = fl::AggregationMethod::kMedian;
  } else {
    options.method = fl::AggregationMethod::kFedAvg;  // fedavg, fedprox, fedadam.
  }
  options.trim_fraction = config.trim_fraction();
  options.clip_norm = config.clip_norm();
  if (config.dp() == kDpFedAvg && !config.secure_aggregation()) {
    // DP-FedAvg's sensitivity bound: every delta clipped to dp_clip_norm (the tighter of the two when both are set).
    options.clip_norm =
        config.clip_norm() > 0 ? std::min(config.clip_norm(), config.dp_clip_norm()) : config.dp_clip_norm();
  }
  return options;
}

}  // namespace

bool ActiveRun::selected(const std::string& site) const {
  return std::find(run.sites.begin(), run.sites.end(), site) != run.sites.end();
}

bool ActiveRun::IsOpenAttempt(const std::string& run_id, int round_number, int attempt) const {
  return run.run_id == run_id && run.state == RunState::kRunning && round.round == round_number &&
         round.attempt == attempt;
}

bool ActiveRun::AllAccepted(const std::set<std::string>& sites) const {
  return std::all_of(sites.begin(), sites.end(), [this](const std::string& s) { return accepted.count(s) > 0; });
}

bool ActiveRun::central_dp_fedavg() const { return run.config.dp() == kDpFedAvg && !run.config.secure_aggregation(); }

int64_t ActiveRun::AggregationWeight(int64_t num_samples) const {
  return run.config.dp() == kDpFedAvg ? 1 : num_samples;
}

absl::Status ActiveRun::StartAttempt() {
  RETURN_IF_ERROR(ResetAggregator());
  accepted.clear();
  declined.clear();
  partials.clear();
  if (secagg != nullptr) {
    const std::set<std::string> keys = secagg->accepted_public_keys();
    secagg_used_keys.insert(keys.begin(), keys.end());
  }
  secagg.reset();
  secagg_vector_length = 0;
  secagg_error.clear();
  secagg_phase = SecAggSession::Phase::kKeys;
  secagg_result.reset();
  return absl::OkStatus();
}

absl::Status ActiveRun::ResetAggregator() {
  fl::AggregatorOptions options = AggregatorOptionsFor(run.config);
  if (!spill_dir.empty()) {
    // A new name each time: the old aggregator removes its own file when it goes, after the new one exists.
    options.spill_path =
        absl::StrCat(spill_dir, "/", run.run_id, "-r", round.round, "-a", round.attempt, "-", spill_files++, ".spill");
  }
  ASSIGN_OR_RETURN(aggregator, fl::MakeAggregator(options));
  return absl::OkStatus();
}

absl::Status ActiveRun::AddUpdateFile(const std::string& path, int64_t num_samples, double norm,
                                      const std::string& what) {
  const fl::TensorSource source = [&](const fl::TensorVisitor& visit) {
    return fl::ForEachDecodedTensorInFile(
        path, global.get(), [&](const std::string& name, at::Tensor tensor) { return visit(name, tensor); });
  };
  return aggregator->AddFrom(source, AggregationWeight(num_samples), norm, what);
}

void ReleaseFreeMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

void ActiveRun::SetGlobal(model::Checkpoint checkpoint) {
  global_checkpoint = std::move(checkpoint);
  global = std::make_shared<const fl::TensorMap>(fl::DropTensors(fl::CheckpointTensors(global_checkpoint), kept_local));
}

absl::StatusOr<std::unique_ptr<ActiveRun>> LoadActiveRun(const BlobStore& blobs, const RunRecord& run,
                                                         const RoundRecord* round, const std::string& spill_dir) {
  auto active = std::make_unique<ActiveRun>();
  active->spill_dir = spill_dir;
  active->run = run;
  if (round != nullptr) active->round = *round;
  const std::string digest = run.state == RunState::kRunning ? active->round.model_digest : run.final_model_digest;
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint, model::LoadCheckpoint(blobs.PathOf(digest)));
  active->personalization = federation::ToProto(run.config.personalization());
  ASSIGN_OR_RETURN(active->kept_local, fl::LocalTensorNames(checkpoint, active->personalization));
  if (!active->kept_local.empty()) {
    LOG(INFO) << "run " << run.run_id << ": personalization " << federation::Text(active->personalization) << " keeps "
              << active->kept_local.size() << " BatchNorm tensors at the sites; updates carry the other tensors";
  }
  active->SetGlobal(std::move(checkpoint));
  RETURN_IF_ERROR(active->StartAttempt());
  if (run.config.aggregation() == "fedadam") {
    fl::FedAdamOptions adam;
    adam.learning_rate = run.config.server_learning_rate();
    ASSIGN_OR_RETURN(active->fedadam, fl::FedAdam::Create(adam));
    if (!run.fedadam_state_path.empty()) {
      ASSIGN_OR_RETURN(fl::TensorMap state, fl::DecodeTensorBundleFile(run.fedadam_state_path));
      RETURN_IF_ERROR(active->fedadam->RestoreState(std::move(state), run.fedadam_rounds));
    }
  }
  return active;
}

}  // namespace fedtune::coordinator
