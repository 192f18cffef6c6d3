// Server-side aggregation of the sites' deltas in one round, and the FedAdam server optimizer across rounds.
//
// A round at the coordinator:
//   auto agg = MakeAggregator(options);                       // one per round
//   for each accepted update: agg->Add(delta, num_samples);   // after ValidateUpdate (validate.h)
//     or, tensor by tensor from a file:  agg->AddFrom(source, num_samples, norm);   // after UpdateValidator
//   TensorMap step = agg->Result();                           // the aggregated delta
//   if FedAdam: step = fed_adam.Step(step);                   // one FedAdam object for the whole run
//   global = ApplyDelta(global, step);                        // tensor_map.h
//
// Methods:
//  - kFedAvg (McMahan et al. 2017): the mean of the deltas weighted by training samples. Streaming: it keeps one
//    running weighted sum, so memory is O(model size) whatever the number of sites, and no reference to the
//    added tensors.
//  - kTrimmedMean (Yin et al. 2018): per coordinate, drop the floor(trim_fraction * n) smallest and largest values
//    and average the rest (summed in ascending order, then divided). kMedian: per coordinate, the median (mean of the
//    two middle values for even n). These order statistics need all n deltas at once, and ignore num_samples (a weight
//    a site reports itself would let one site outvote the others). In memory (AggregatorOptions::spill_path empty) they
//    keep a float32 copy of each delta, O(n x model size). Spilling (spill_path set) they append each delta as float32
//    to that file, hold none of it in memory, and Result() reads it back in blocks of coordinates x all sites of at
//    most spill_block_bytes (with the sort's temporaries): the same results, bit for bit.
//  - Norm clipping (any method, clip_norm > 0): each delta is scaled by min(1, clip_norm / ||delta||) before it is
//    aggregated, with the norm of tensor_map.h's L2Norm(options.norm); tensors outside that norm are not scaled.
// FedProx needs nothing here: its proximal term is applied by the sites' trainer (train::TrainerOptions::proximal_mu).
//
// Tensor kinds:
//  - Floating tensors are aggregated in float32 (float64 tensors in float64) and returned in their own dtype.
//  - Integer tensors (BatchNorm's num_batches_tracked) are counters, not averaged: the result is the largest delta,
//    so the new global counter is that of the site that trained the most batches.
//  - BatchNorm running_mean / running_var are aggregated like weights (their delta is averaged) and bypass
//    FedAdam (they are statistics, not gradients).
#ifndef FEDTUNE_COMMON_FL_AGGREGATE_H_
#define FEDTUNE_COMMON_FL_AGGREGATE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/fl/tensor_map.h"

namespace fedtune::fl {

enum class AggregationMethod { kFedAvg, kTrimmedMean, kMedian };

// "fedavg", "trimmed_mean", "median".
std::string AggregationMethodName(AggregationMethod method);
// Parses the names above; InvalidArgument listing them otherwise.
absl::StatusOr<AggregationMethod> ParseAggregationMethod(absl::string_view name);

struct AggregatorOptions {
  AggregationMethod method = AggregationMethod::kFedAvg;
  // kTrimmedMean: fraction of the updates trimmed at EACH end, in [0, 0.5). Default 0.1.
  double trim_fraction = 0.1;
  // > 0: clip each delta to this L2 norm before aggregating. Default 0: no clipping.
  double clip_norm = 0.0;
  // The norm used for clipping. Default: every floating tensor, BatchNorm running statistics included.
  NormOptions norm;
  // kTrimmedMean / kMedian: the file the deltas spill to (created, or truncated, by MakeAggregator; removed when
  // the aggregator is destroyed). Its directory must exist. Default empty: the deltas are kept in memory.
  std::string spill_path;
  // Spilling only: the most bytes Result() holds for one block of coordinates x all sites, counting the sort's
  // temporaries (values and int64 indices). Default 64 MiB; at least one coordinate per block whatever the value.
  int64_t spill_block_bytes = int64_t{64} << 20;
};

// A delta read one tensor at a time (e.g. decoded from a spool file, bundle_file.h): a TensorSource calls
// visit(name, tensor) for each tensor of the delta, in any order, and returns visit's first error (stopping there)
// or its own (e.g. a read error). Every call must produce the same tensors. The tensors are read, never kept.
using TensorVisitor = std::function<absl::Status(const std::string& name, const at::Tensor& tensor)>;
using TensorSource = std::function<absl::Status(const TensorVisitor& visit)>;

// Aggregates the deltas of one round. Thread-safe: every method may be called concurrently (calls are serialized
// by an internal mutex; AddFrom holds it while its source runs); Result may be called at any time and more than
// once, TakeResult once, last. A spilling aggregator owns its spill file: created by MakeAggregator, removed by the
// destructor.
class Aggregator {
 public:
  virtual ~Aggregator() = default;

  // Adds one site's delta (validated against the global model beforehand). num_samples: the training samples behind
  // it, > 0. Tensors are read, never kept by reference. InvalidArgument for num_samples <= 0, an empty delta, a
  // non-finite value, an unsupported dtype, or names/shapes/dtypes that differ from the first added delta's (named).
  // On error nothing is added.
  virtual absl::Status Add(const TensorMap& delta, int64_t num_samples) = 0;

  // Adds one site's delta read tensor by tensor from `source`, holding one tensor of it at a time. Checks as Add,
  // tensor by tensor; `what` names the update in messages. `norm`: the delta's L2Norm under options.norm when the
  // caller computed it (UpdateValidator's summary); used only for clipping; negative (default): when clipping, the
  // aggregator reads `source` once more first to compute it. Errors: Add's, and the source's own (returned with
  // their code, prefixed with `what`).
  // On error the aggregator is as before the call, except in one case: a kFedAvg aggregator that already holds an
  // update cannot take out part of a delta exactly (floating-point sums do not undo), so an error after part of the
  // delta was added leaves it damaged(): every later Add, AddFrom and Result returns FailedPrecondition, and its
  // owner must discard it and add the accepted updates to a new one. A caller that validated the delta first
  // (UpdateValidator) only meets this on a read error. The order statistics roll back (truncating their spill file).
  virtual absl::Status AddFrom(const TensorSource& source, int64_t num_samples, double norm = -1.0,
                               absl::string_view what = "update") = 0;

  // True after an AddFrom that could not be undone (see there).
  virtual bool damaged() const = 0;

  // The aggregated delta (contiguous CPU tensors in the first delta's dtypes). FailedPrecondition when nothing was
  // added.
  virtual absl::StatusOr<TensorMap> Result() const = 0;

  // Result() for the last use of the aggregator (a round's close), reusing its own memory where it can: kFedAvg
  // divides its running sum in place and hands it over (no second model in memory) and is then damaged() (its
  // owner builds a new one if it still needs it); the order statistics return Result() and stay usable. Errors as
  // Result, after which the aggregator is unchanged.
  virtual absl::StatusOr<TensorMap> TakeResult() = 0;

  virtual int64_t num_updates() const = 0;
  // Sum of num_samples over the added deltas.
  virtual int64_t total_samples() const = 0;
  // True when held memory is O(model size) whatever the number of updates (kFedAvg, and the order statistics when
  // spilling); false when it grows with every update (kTrimmedMean, kMedian in memory).
  virtual bool streaming() const = 0;
  // Bytes of tensor storage held in memory now (not counting a spill file).
  virtual int64_t HeldBytes() const = 0;
  // Bytes in the spill file now (0 when not spilling).
  virtual int64_t SpilledBytes() const = 0;
  // The method's name, with its parameters, e.g. "trimmed_mean(0.2), clip 5".
  virtual std::string Describe() const = 0;
};

// A new aggregator. InvalidArgument for trim_fraction outside [0, 0.5) with kTrimmedMean, or a negative or
// non-finite clip_norm; the spill file's open errors (io::ErrnoToStatus, naming it).
absl::StatusOr<std::unique_ptr<Aggregator>> MakeAggregator(const AggregatorOptions& options = {});

struct FedAdamOptions {
  // Server learning rate eta. Default 0.01; Reddi et al. (2021) tune it per task, typically in [1e-3, 1].
  double learning_rate = 0.01;
  double beta1 = 0.9;   // First-moment decay, [0, 1). Default 0.9.
  double beta2 = 0.99;  // Second-moment decay, [0, 1). Default 0.99.
  // Adaptivity tau > 0: in the denominator, and v starts at tau^2 (the paper's v_{-1} >= tau^2). Default 1e-3.
  double tau = 1e-3;
};

// FedAdam, the adaptive server optimizer of Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Alg. 2,
// without bias correction, as in the paper. Per round, with d the aggregated delta (e.g. FedAvg's mean):
//   m = beta1 m + (1 - beta1) d;  v = beta2 v + (1 - beta2) d^2;  step = eta m / (sqrt(v) + tau)
// and the caller adds step to the global model. m starts at 0, v at tau^2 (float32 state, one m and v per
// trainable tensor: O(model size)). BatchNorm running statistics and integer tensors pass through: their step is d.
//
// Not thread-safe: the round manager calls Step once per round.
class FedAdam {
 public:
  // InvalidArgument for learning_rate <= 0, a beta outside [0, 1) or tau <= 0 (or any non-finite value).
  static absl::StatusOr<std::unique_ptr<FedAdam>> Create(const FedAdamOptions& options = {});

  // The server step for this round's aggregated delta; updates m and v in place (no second copy of the state).
  // InvalidArgument when `delta` is empty, has a non-finite value, or names/shapes/dtypes differ from the previous
  // rounds' (named): then the state is unchanged. Internal for a LibTorch error (e.g. out of memory), after which the
  // state may be partly updated: restore it (RestoreState) before the next Step.
  absl::StatusOr<TensorMap> Step(const TensorMap& delta);
  // Step, writing the step into `delta` itself (no second model in memory); `delta`'s tensors must not be shared
  // with anything that should keep the aggregated delta. Errors as Step; on InvalidArgument `delta` is unchanged.
  absl::Status StepInPlace(TensorMap& delta);

  // Completed steps.
  int64_t rounds() const { return rounds_; }

  // The optimizer state for persistence across coordinator restarts: "m/<name>" and "v/<name>" float32 tensors
  // (empty before the first step). Store it with rounds() (e.g. encoded with codec.h's kDenseFp32).
  TensorMap ExportState() const;
  // The same tensors without copies, e.g. to write them to a file (bundle_file.h's WriteTensorBundleFile). They are
  // the optimizer's own: valid, and unchanged, until the next Step or RestoreState.
  TensorMap StateView() const;
  // Restores ExportState()'s output. InvalidArgument when a name lacks its "m/" or "v/" prefix or partner, shapes
  // of a pair differ, or a value is non-finite (or v < 0); on error the state is unchanged. The tensors are copied,
  // except those that only `state` holds (a map moved in, e.g. just decoded from a file): those are taken as they
  // are, so that restoring needs no second copy of the state (two models) in memory.
  absl::Status RestoreState(TensorMap state, int64_t rounds);

 private:
  explicit FedAdam(const FedAdamOptions& options) : options_(options) {}

  FedAdamOptions options_;
  TensorMap m_;
  TensorMap v_;
  TensorMap schema_;  // Zero-size meta tensors with the first delta's shapes and dtypes.
  int64_t rounds_ = 0;
};

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_AGGREGATE_H_
