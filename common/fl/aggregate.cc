#include "common/fl/aggregate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"

namespace fedtune::fl {
namespace {

// Shape and dtype of every tensor, without storage.
TensorMap SchemaOf(const TensorMap& tensors) {
  TensorMap schema;
  for (const auto& [name, t] : tensors) {
    schema.emplace(name, at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).device(at::kMeta)));
  }
  return schema;
}

bool IsSupported(const at::Tensor& t) {
  return IsFloating(t) || t.scalar_type() == at::kLong || t.scalar_type() == at::kInt;
}

// float32, or float64 for float64 tensors.
at::ScalarType AccumulationType(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

// Checks what every aggregator requires of a delta: non-empty, supported dtypes, finite, same schema as `schema`
// (when not empty).
absl::Status CheckDelta(const TensorMap& schema, const TensorMap& delta, int64_t num_samples, absl::string_view what) {
  if (num_samples <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": num_samples ", num_samples, " is not positive"));
  }
  if (delta.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty delta"));
  for (const auto& [name, t] : delta) {
    if (!t.defined() || !IsSupported(t)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor '", name, "' has unsupported dtype ", t.defined() ? DTypeName(t) : "undefined"));
    }
    if (IsFloating(t) && t.numel() > 0 && !at::isfinite(t).all().item<bool>()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' has non-finite values"));
    }
  }
  if (!schema.empty()) return CheckSameSchema(schema, delta, what);
  return absl::OkStatus();
}

// Shared by all methods: validation, clipping, integer counters, counts, locking. Subclasses aggregate the floating
// tensors.
class AggregatorBase : public Aggregator {
 public:
  explicit AggregatorBase(const AggregatorOptions& options) : options_(options) {}

  absl::Status Add(const TensorMap& delta, int64_t num_samples) final {
    absl::MutexLock lock(&mu_);
    const std::string what = absl::StrCat("update #", num_updates_ + 1);
    try {
      RETURN_IF_ERROR(CheckDelta(schema_, delta, num_samples, what));
      double factor = 1.0;
      if (options_.clip_norm > 0.0) {
        const double norm = L2Norm(delta, options_.norm);
        if (norm > options_.clip_norm) factor = options_.clip_norm / norm;
      }
      // Convert (and clip) everything before touching the state, so that an error leaves it unchanged.
      TensorMap floating;
      for (const auto& [name, t] : delta) {
        if (!IsFloating(t)) continue;
        at::Tensor f = t.detach().to(at::kCPU, AccumulationType(t.scalar_type()));
        if (factor != 1.0 && CountsInNorm(name, t, options_.norm)) f = f.mul(factor);
        floating.emplace(name, std::move(f));
      }
      if (schema_.empty()) schema_ = SchemaOf(delta);
      for (const auto& [name, t] : delta) {
        if (IsFloating(t)) continue;
        at::Tensor v = t.detach().to(at::kCPU, at::kLong);
        auto it = integer_max_.find(name);
        if (it == integer_max_.end()) {
          integer_max_.emplace(name, v.clone());
        } else {
          it->second = at::maximum(it->second, v);
        }
      }
      AddFloating(std::move(floating), num_samples);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
    }
    ++num_updates_;
    total_samples_ += num_samples;
    return absl::OkStatus();
  }

  absl::StatusOr<TensorMap> Result() const final {
    absl::MutexLock lock(&mu_);
    if (num_updates_ == 0) return absl::FailedPreconditionError(absl::StrCat(Describe(), ": no update was added"));
    TensorMap out;
    try {
      for (const auto& [name, meta] : schema_) {
        at::Tensor value;
        if (IsFloating(meta)) {
          value = FloatingResult(name);
        } else {
          value = integer_max_.at(name);
        }
        out.emplace(name, value.to(meta.scalar_type()).contiguous());
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(Describe(), ": ", e.what_without_backtrace()));
    }
    return out;
  }

  int64_t num_updates() const final {
    absl::MutexLock lock(&mu_);
    return num_updates_;
  }
  int64_t total_samples() const final {
    absl::MutexLock lock(&mu_);
    return total_samples_;
  }
  int64_t HeldBytes() const final {
    absl::MutexLock lock(&mu_);
    int64_t bytes = FloatingBytes();
    for (const auto& [name, t] : integer_max_) bytes += static_cast<int64_t>(t.nbytes());
    return bytes;
  }
  std::string Describe() const final {
    std::string s = MethodDescription();
    if (options_.clip_norm > 0.0) absl::StrAppend(&s, ", clip ", options_.clip_norm);
    return s;
  }

 protected:
  // Adds the floating tensors of one delta (already converted to the accumulation type and clipped).
  virtual void AddFloating(TensorMap floating, int64_t num_samples) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // The aggregate of one floating tensor, in the accumulation type.
  virtual at::Tensor FloatingResult(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  virtual int64_t FloatingBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  virtual std::string MethodDescription() const = 0;

  int64_t total_samples_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_samples_; }

  const AggregatorOptions options_;
  mutable absl::Mutex mu_;

 private:
  TensorMap schema_ ABSL_GUARDED_BY(mu_);
  TensorMap integer_max_ ABSL_GUARDED_BY(mu_);
  int64_t num_updates_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t total_samples_ ABSL_GUARDED_BY(mu_) = 0;
};

// Running weighted sum: one accumulator per tensor.
class FedAvgAggregator final : public AggregatorBase {
 public:
  using AggregatorBase::AggregatorBase;
  bool streaming() const override { return true; }

 protected:
  void AddFloating(TensorMap floating, int64_t num_samples) override {
    const double w = static_cast<double>(num_samples);
    for (auto& [name, f] : floating) {
      auto it = sum_.find(name);
      if (it == sum_.end()) {
        sum_.emplace(name, f.mul(w));  // A new tensor: nothing of the caller's is kept.
      } else {
        it->second.add_(f, w);
      }
    }
  }
  at::Tensor FloatingResult(const std::string& name) const override {
    return sum_.at(name).div(static_cast<double>(total_samples_locked()));
  }
  int64_t FloatingBytes() const override {
    int64_t bytes = 0;
    for (const auto& [name, t] : sum_) bytes += static_cast<int64_t>(t.nbytes());
    return bytes;
  }
  std::string MethodDescription() const override { return "fedavg"; }

 private:
  TensorMap sum_ ABSL_GUARDED_BY(mu_);
};

// Keeps every delta; the result is a coordinate-wise order statistic.
class OrderStatisticAggregator final : public AggregatorBase {
 public:
  using AggregatorBase::AggregatorBase;
  bool streaming() const override { return false; }

 protected:
  void AddFloating(TensorMap floating, int64_t num_samples) override {
    for (auto& [name, f] : floating) {
      // Own copy: `f` may share the caller's storage.
      deltas_[name].push_back(f.clone());
    }
  }
  at::Tensor FloatingResult(const std::string& name) const override {
    const std::vector<at::Tensor>& all = deltas_.at(name);
    const int64_t n = static_cast<int64_t>(all.size());
    at::Tensor sorted = std::get<0>(at::stack(all, 0).sort(0));
    if (options_.method == AggregationMethod::kMedian) {
      if (n % 2 == 1) return sorted.select(0, n / 2);
      return sorted.select(0, n / 2 - 1).add(sorted.select(0, n / 2)).div(2.0);
    }
    // floor with a tolerance: 0.2 * 5 must trim 1, not 0.
    const int64_t trim = static_cast<int64_t>(std::floor(options_.trim_fraction * static_cast<double>(n) + 1e-9));
    return sorted.narrow(0, trim, n - 2 * trim).mean(0);
  }
  int64_t FloatingBytes() const override {
    int64_t bytes = 0;
    for (const auto& [name, list] : deltas_) {
      for (const at::Tensor& t : list) bytes += static_cast<int64_t>(t.nbytes());
    }
    return bytes;
  }
  std::string MethodDescription() const override {
    if (options_.method == AggregationMethod::kMedian) return "median";
    return absl::StrCat("trimmed_mean(", options_.trim_fraction, ")");
  }

 private:
  std::map<std::string, std::vector<at::Tensor>> deltas_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::string AggregationMethodName(AggregationMethod method) {
  switch (method) {
    case AggregationMethod::kFedAvg:
      return "fedavg";
    case AggregationMethod::kTrimmedMean:
      return "trimmed_mean";
    case AggregationMethod::kMedian:
      return "median";
  }
  return "unknown";
}

absl::StatusOr<AggregationMethod> ParseAggregationMethod(absl::string_view name) {
  for (AggregationMethod m :
       {AggregationMethod::kFedAvg, AggregationMethod::kTrimmedMean, AggregationMethod::kMedian}) {
    if (name == AggregationMethodName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown aggregation method '", name, "' (fedavg, trimmed_mean, median)"));
}

absl::StatusOr<std::unique_ptr<Aggregator>> MakeAggregator(const AggregatorOptions& options) {
  if (!std::isfinite(options.clip_norm) || options.clip_norm < 0.0) {
    return absl::InvalidArgumentError(absl::StrCat("clip norm ", options.clip_norm, " must be >= 0 (0: no clipping)"));
  }
  switch (options.method) {
    case AggregationMethod::kFedAvg:
      return std::unique_ptr<Aggregator>(new FedAvgAggregator(options));
    case AggregationMethod::kTrimmedMean:
      if (!(options.trim_fraction >= 0.0 && options.trim_fraction < 0.5)) {
        return absl::InvalidArgumentError(absl::StrCat("trim fraction ", options.trim_fraction, " is not in [0, 0.5)"));
      }
      return std::unique_ptr<Aggregator>(new OrderStatisticAggregator(options));
    case AggregationMethod::kMedian:
      return std::unique_ptr<Aggregator>(new OrderStatisticAggregator(options));
  }
  return absl::InvalidArgumentError("unknown aggregation method");
}

absl::StatusOr<std::unique_ptr<FedAdam>> FedAdam::Create(const FedAdamOptions& options) {
  auto in_unit = [](double b) { return b >= 0.0 && b < 1.0; };
  if (!(options.learning_rate > 0.0) || !std::isfinite(options.learning_rate) || !in_unit(options.beta1) ||
      !in_unit(options.beta2) || !(options.tau > 0.0) || !std::isfinite(options.tau)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "FedAdam options need learning_rate > 0, beta1 and beta2 in [0, 1), tau > 0; got %g, %g, %g, %g",
        options.learning_rate, options.beta1, options.beta2, options.tau));
  }
  return std::unique_ptr<FedAdam>(new FedAdam(options));
}

absl::StatusOr<TensorMap> FedAdam::Step(const TensorMap& delta) {
  const std::string what = absl::StrCat("FedAdam round ", rounds_ + 1);
  TensorMap step, m, v;
  try {
    absl::Status status = CheckDelta(schema_, delta, 1, what);
    if (!status.ok()) return status;
    const double b1 = options_.beta1, b2 = options_.beta2;
    for (const auto& [name, d] : delta) {
      if (!IsFloating(d) || IsBatchNormStatistic(name)) {
        step.emplace(name, d.detach().to(at::kCPU).clone());
        continue;
      }
      const at::Tensor g = d.detach().to(at::kCPU, at::kFloat);
      auto mi = m_.find(name);
      auto vi = v_.find(name);
      if ((mi != m_.end() && mi->second.sizes() != g.sizes()) || (vi != v_.end() && vi->second.sizes() != g.sizes())) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' has shape ", ShapeString(g),
                                                       ", the optimizer state's is ",
                                                       ShapeString(mi != m_.end() ? mi->second : vi->second)));
      }
      const at::Tensor m_old = mi != m_.end() ? mi->second : at::zeros_like(g);
      const at::Tensor v_old = vi != v_.end() ? vi->second : at::full_like(g, options_.tau * options_.tau);
      at::Tensor m_new = m_old.mul(b1).add_(g, 1.0 - b1);
      at::Tensor v_new = v_old.mul(b2).addcmul_(g, g, 1.0 - b2);
      at::Tensor s = m_new.div(v_new.sqrt().add_(options_.tau)).mul_(options_.learning_rate);
      step.emplace(name, s.to(d.scalar_type()).contiguous());
      m.emplace(name, std::move(m_new));
      v.emplace(name, std::move(v_new));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
  if (schema_.empty()) schema_ = SchemaOf(delta);
  m_ = std::move(m);
  v_ = std::move(v);
  ++rounds_;
  return step;
}

TensorMap FedAdam::ExportState() const {
  TensorMap state;
  for (const auto& [name, t] : m_) state.emplace("m/" + name, t.clone());
  for (const auto& [name, t] : v_) state.emplace("v/" + name, t.clone());
  return state;
}

absl::Status FedAdam::RestoreState(const TensorMap& state, int64_t rounds) {
  TensorMap m, v;
  try {
    for (const auto& [key, t] : state) {
      const bool is_m = key.rfind("m/", 0) == 0;
      const bool is_v = key.rfind("v/", 0) == 0;
      if (!is_m && !is_v) {
        return absl::InvalidArgumentError(absl::StrCat("FedAdam state: key '", key, "' lacks an m/ or v/ prefix"));
      }
      if (!t.defined() || !IsFloating(t) || (t.numel() > 0 && !at::isfinite(t).all().item<bool>())) {
        return absl::InvalidArgumentError(absl::StrCat("FedAdam state: '", key, "' is not a finite float tensor"));
      }
      at::Tensor f = t.detach().to(at::kCPU, at::kFloat).contiguous().clone();
      if (is_v && f.numel() > 0 && f.min().item<float>() < 0.0f) {
        return absl::InvalidArgumentError(absl::StrCat("FedAdam state: '", key, "' has negative values"));
      }
      (is_m ? m : v).emplace(key.substr(2), std::move(f));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("FedAdam state: ", e.what_without_backtrace()));
  }
  for (const auto& [name, t] : m) {
    auto it = v.find(name);
    if (it == v.end()) return absl::InvalidArgumentError(absl::StrCat("FedAdam state: 'm/", name, "' has no v/"));
    if (it->second.sizes() != t.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("FedAdam state: shapes of m/ and v/ '", name, "' differ"));
    }
  }
  for (const auto& [name, t] : v) {
    if (m.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("FedAdam state: 'v/", name, "' has no m/"));
    }
  }
  if (rounds < 0) return absl::InvalidArgumentError(absl::StrCat("FedAdam state: negative rounds ", rounds));
  m_ = std::move(m);
  v_ = std::move(v);
  schema_.clear();  // The next delta defines it again; its shapes must match m and v.
  rounds_ = rounds;
  return absl::OkStatus();
}

}  // namespace fedtune::fl
