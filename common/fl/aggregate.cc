#include "common/fl/aggregate.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/io/file_util.h"
#include "common/logging.h"
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

// Shared by all methods: checks, clipping, integer counters, counts, locking, rollback. Subclasses aggregate the
// floating tensors, one site at a time: BeginFloating, AddFloating per tensor, then CommitFloating or
// RollBackFloating.
class AggregatorBase : public Aggregator {
 public:
  explicit AggregatorBase(const AggregatorOptions& options) : options_(options) {}

  absl::Status Add(const TensorMap& delta, int64_t num_samples) final {
    absl::MutexLock lock(&mu_);
    const std::string what = absl::StrCat("update #", num_updates_ + 1);
    // Checked whole before anything is added, so that an error leaves the state unchanged.
    try {
      RETURN_IF_ERROR(CheckDelta(schema_, delta, num_samples, what));
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
    }
    const TensorSource source = [&delta](const TensorVisitor& visit) -> absl::Status {
      for (const auto& [name, t] : delta) RETURN_IF_ERROR(visit(name, t));
      return absl::OkStatus();
    };
    return AddLocked(source, num_samples, -1.0, what);
  }

  absl::Status AddFrom(const TensorSource& source, int64_t num_samples, double norm, absl::string_view what) final {
    absl::MutexLock lock(&mu_);
    return AddLocked(source, num_samples, norm, absl::StrCat(what, " (update #", num_updates_ + 1, ")"));
  }

  bool damaged() const final {
    absl::MutexLock lock(&mu_);
    return damaged_;
  }

  absl::StatusOr<TensorMap> Result() const final {
    absl::MutexLock lock(&mu_);
    return ResultLocked();
  }

  absl::StatusOr<TensorMap> TakeResult() final {
    absl::MutexLock lock(&mu_);
    if (!CanTakeFloating()) return ResultLocked();
    RETURN_IF_ERROR(CheckNotDamaged());
    if (num_updates_ == 0) return absl::FailedPreconditionError(absl::StrCat(Describe(), ": no update was added"));
    TensorMap out;
    try {
      for (const auto& [name, meta] : schema_) {
        // In float32 (float64) as Result; float16 tensors are converted, a copy only of those.
        at::Tensor value = IsFloating(meta) ? TakeFloating(name) : integer_max_.at(name);
        out.emplace(name, value.to(meta.scalar_type()).contiguous());
      }
    } catch (const c10::Error& e) {
      damaged_ = true;  // Part of the sums may be divided already.
      return absl::InternalError(absl::StrCat(Describe(), ": ", e.what_without_backtrace()));
    }
    damaged_ = true;  // The sums were handed over.
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
  int64_t SpilledBytes() const final {
    absl::MutexLock lock(&mu_);
    return SpilledBytesLocked();
  }
  std::string Describe() const final {
    std::string s = MethodDescription();
    if (options_.clip_norm > 0.0) absl::StrAppend(&s, ", clip ", options_.clip_norm);
    return s;
  }

 protected:
  // Starts adding one site's floating tensors.
  virtual absl::Status BeginFloating() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return absl::OkStatus(); }
  // Adds one floating tensor of the site's delta (converted to the accumulation type and clipped; it may share the
  // caller's storage).
  virtual absl::Status AddFloating(const std::string& name, const at::Tensor& f, int64_t num_samples)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // The site's tensors are all in: make them count.
  virtual void CommitFloating() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {}
  // Takes out what AddFloating added since BeginFloating; false when that cannot be done exactly.
  virtual bool RollBackFloating() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // The aggregate of one floating tensor (`meta`: its shape and dtype), in the accumulation type.
  virtual absl::StatusOr<at::Tensor> FloatingResult(const std::string& name, const at::Tensor& meta) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  virtual int64_t FloatingBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  // TakeResult: whether FloatingResult's value can be made in the aggregator's own memory, and making it (the
  // aggregator is damaged afterwards).
  virtual bool CanTakeFloating() const { return false; }
  virtual at::Tensor TakeFloating(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    LOG(FATAL) << "TakeFloating of an aggregator that cannot take: " << name;
    return {};
  }
  virtual int64_t SpilledBytesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return 0; }
  virtual std::string MethodDescription() const = 0;

  int64_t total_samples_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_samples_; }
  int64_t num_updates_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return num_updates_; }

  const AggregatorOptions options_;
  mutable absl::Mutex mu_;

 private:
  absl::StatusOr<TensorMap> ResultLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(CheckNotDamaged());
    if (num_updates_ == 0) return absl::FailedPreconditionError(absl::StrCat(Describe(), ": no update was added"));
    TensorMap out;
    try {
      for (const auto& [name, meta] : schema_) {
        at::Tensor value;
        if (IsFloating(meta)) {
          ASSIGN_OR_RETURN(value, FloatingResult(name, meta));
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

  absl::Status CheckNotDamaged() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!damaged_) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(), ": an update failed half-way and could not be taken out; rebuild the aggregator"));
  }

  // The norm of the delta in `source` under options_.norm, as L2Norm computes it (squares summed in name order).
  absl::StatusOr<double> NormOf(const TensorSource& source) const {
    std::map<std::string, double> squares;
    RETURN_IF_ERROR(source([&](const std::string& name, const at::Tensor& t) -> absl::Status {
      if (!CountsInNorm(name, t, options_.norm)) return absl::OkStatus();
      at::Tensor d = t.to(at::kCPU, at::kDouble);
      squares[name] = d.mul(d).sum().item<double>();
      return absl::OkStatus();
    }));
    double sum = 0.0;
    for (const auto& [name, sq] : squares) sum += sq;
    return std::sqrt(sum);
  }

  absl::Status AddLocked(const TensorSource& source, int64_t num_samples, double norm, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(CheckNotDamaged());
    if (num_samples <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": num_samples ", num_samples, " is not positive"));
    }
    auto prefixed = [&what](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
    };
    double factor = 1.0;
    if (options_.clip_norm > 0.0) {
      if (norm < 0.0) {
        absl::StatusOr<double> computed;
        try {
          computed = NormOf(source);
        } catch (const c10::Error& e) {
          computed = absl::InternalError(e.what_without_backtrace());
        }
        if (!computed.ok()) return prefixed(computed.status());
        norm = *computed;
      }
      if (norm > options_.clip_norm) factor = options_.clip_norm / norm;
    }
    RETURN_IF_ERROR(BeginFloating());
    TensorMap schema;      // Of this delta.
    TensorMap integers;    // Its integer tensors, merged into integer_max_ when it is complete.
    bool touched = false;  // AddFloating was called.
    const TensorVisitor visit = [&](const std::string& name, const at::Tensor& t) -> absl::Status {
      if (!t.defined() || !IsSupported(t)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name, "' has unsupported dtype ", t.defined() ? DTypeName(t) : "undefined"));
      }
      at::Tensor meta = at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).device(at::kMeta));
      if (!schema_.empty()) {
        auto it = schema_.find(name);
        if (it == schema_.end()) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is not in the first update"));
        }
        RETURN_IF_ERROR(CheckSameSchema({{name, it->second}}, {{name, meta}}, "the first update"));
      }
      if (!schema.emplace(name, meta).second) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' occurs twice"));
      }
      if (IsFloating(t) && t.numel() > 0 && !at::isfinite(t).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has non-finite values"));
      }
      if (!IsFloating(t)) {
        integers.emplace(name, t.detach().to(at::kCPU, at::kLong).clone());
        return absl::OkStatus();
      }
      at::Tensor f = t.detach().to(at::kCPU, AccumulationType(t.scalar_type())).contiguous();
      if (factor != 1.0 && CountsInNorm(name, t, options_.norm)) f = f.mul(factor);
      touched = true;
      return AddFloating(name, f, num_samples);
    };
    absl::Status status;
    try {
      status = source(visit);
      if (status.ok() && schema.empty()) status = absl::InvalidArgumentError("empty delta");
      if (status.ok() && !schema_.empty() && schema.size() != schema_.size()) {
        status = CheckSameSchema(schema_, schema, "this update");
      }
    } catch (const c10::Error& e) {
      status = absl::InternalError(e.what_without_backtrace());
    }
    if (!status.ok()) {
      if (touched && !RollBackFloating()) damaged_ = true;
      return prefixed(status);
    }
    CommitFloating();
    if (schema_.empty()) schema_ = std::move(schema);
    for (auto& [name, v] : integers) {
      auto it = integer_max_.find(name);
      if (it == integer_max_.end()) {
        integer_max_.emplace(name, std::move(v));
      } else {
        it->second = at::maximum(it->second, v);
      }
    }
    ++num_updates_;
    total_samples_ += num_samples;
    return absl::OkStatus();
  }

  TensorMap schema_ ABSL_GUARDED_BY(mu_);
  TensorMap integer_max_ ABSL_GUARDED_BY(mu_);
  int64_t num_updates_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t total_samples_ ABSL_GUARDED_BY(mu_) = 0;
  bool damaged_ ABSL_GUARDED_BY(mu_) = false;
};

// Running weighted sum: one accumulator per tensor.
class FedAvgAggregator final : public AggregatorBase {
 public:
  using AggregatorBase::AggregatorBase;
  bool streaming() const override { return true; }

 protected:
  absl::Status AddFloating(const std::string& name, const at::Tensor& f, int64_t num_samples) override {
    const double w = static_cast<double>(num_samples);
    auto it = sum_.find(name);
    if (it == sum_.end()) {
      sum_.emplace(name, f.mul(w));  // A new tensor: nothing of the caller's is kept.
    } else {
      it->second.add_(f, w);
    }
    return absl::OkStatus();
  }
  bool RollBackFloating() override {
    if (num_updates_locked() > 0) return false;  // A sum cannot be undone exactly.
    sum_.clear();                                // The first update: nothing else is in it.
    return true;
  }
  absl::StatusOr<at::Tensor> FloatingResult(const std::string& name, const at::Tensor&) const override {
    return sum_.at(name).div(static_cast<double>(total_samples_locked()));
  }
  bool CanTakeFloating() const override { return true; }
  at::Tensor TakeFloating(const std::string& name) override {
    // The same division as FloatingResult's, in place: the same bits.
    at::Tensor sum = std::move(sum_.at(name));
    sum_.erase(name);
    return sum.div_(static_cast<double>(total_samples_locked()));
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

// The coordinate-wise order statistic of `rows` ([n, ...], one row per update), as both order-statistic
// aggregators compute it: elementwise operations on the sorted rows, so that each coordinate's bits do not depend on
// the other dimensions (a whole tensor in memory, or a block of one read from a spill file).
at::Tensor OrderStatistic(const AggregatorOptions& options, const at::Tensor& rows) {
  const int64_t n = rows.size(0);
  at::Tensor sorted = std::get<0>(rows.sort(0));
  if (options.method == AggregationMethod::kMedian) {
    if (n % 2 == 1) return sorted.select(0, n / 2);
    return sorted.select(0, n / 2 - 1).add(sorted.select(0, n / 2)).div(2.0);
  }
  // floor with a tolerance: 0.2 * 5 must trim 1, not 0.
  const int64_t trim = static_cast<int64_t>(std::floor(options.trim_fraction * static_cast<double>(n) + 1e-9));
  // Summed row by row in ascending order, not with mean(0): a reduction's order of additions depends on the
  // tensor's layout, and the spilled aggregator sees a block of a tensor where the in-memory one sees all of it.
  at::Tensor sum = sorted.select(0, trim).clone();
  for (int64_t i = trim + 1; i < n - trim; ++i) sum.add_(sorted.select(0, i));
  return sum.div_(static_cast<double>(n - 2 * trim));
}

std::string OrderStatisticDescription(const AggregatorOptions& options) {
  if (options.method == AggregationMethod::kMedian) return "median";
  return absl::StrCat("trimmed_mean(", options.trim_fraction, ")");
}

// Keeps every delta in memory; the result is a coordinate-wise order statistic.
class OrderStatisticAggregator final : public AggregatorBase {
 public:
  using AggregatorBase::AggregatorBase;
  bool streaming() const override { return false; }

 protected:
  absl::Status AddFloating(const std::string& name, const at::Tensor& f, int64_t) override {
    pending_[name] = f.clone();  // Own copy: `f` may share the caller's storage.
    return absl::OkStatus();
  }
  void CommitFloating() override {
    for (auto& [name, f] : pending_) deltas_[name].push_back(std::move(f));
    pending_.clear();
  }
  bool RollBackFloating() override {
    pending_.clear();
    return true;
  }
  absl::StatusOr<at::Tensor> FloatingResult(const std::string& name, const at::Tensor&) const override {
    return OrderStatistic(options_, at::stack(deltas_.at(name), 0));
  }
  int64_t FloatingBytes() const override {
    int64_t bytes = 0;
    for (const auto& [name, list] : deltas_) {
      for (const at::Tensor& t : list) bytes += static_cast<int64_t>(t.nbytes());
    }
    return bytes;
  }
  std::string MethodDescription() const override { return OrderStatisticDescription(options_); }

 private:
  std::map<std::string, std::vector<at::Tensor>> deltas_ ABSL_GUARDED_BY(mu_);
  TensorMap pending_ ABSL_GUARDED_BY(mu_);  // The site being added.
};

// Writes or reads exactly `size` bytes at `offset`, retrying short transfers and EINTR.
absl::Status PreadFully(int fd, char* data, size_t size, int64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, data, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io::ErrnoToStatus(errno, "cannot read spill file", path);
    if (n == 0) return absl::DataLossError(absl::StrCat("spill file '", path, "' is shorter than expected"));
    data += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

absl::Status PwriteFully(int fd, const char* data, size_t size, int64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io::ErrnoToStatus(errno, "cannot write spill file", path);
    data += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

// Appends every delta to a file, one record per update, each tensor at the same offset within its record (the
// first update's layout); the result reads blocks of coordinates x all updates back.
class SpillingOrderStatisticAggregator final : public AggregatorBase {
 public:
  static absl::StatusOr<std::unique_ptr<Aggregator>> Create(const AggregatorOptions& options) {
    const int fd = ::open(options.spill_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return io::ErrnoToStatus(errno, "cannot create spill file", options.spill_path);
    return std::unique_ptr<Aggregator>(new SpillingOrderStatisticAggregator(options, fd));
  }
  ~SpillingOrderStatisticAggregator() override {
    ::close(fd_);
    ::unlink(options_.spill_path.c_str());
  }
  bool streaming() const override { return true; }

 protected:
  absl::Status BeginFloating() override {
    pending_layout_.clear();
    pending_bytes_ = 0;
    return absl::OkStatus();
  }
  absl::Status AddFloating(const std::string& name, const at::Tensor& f, int64_t) override {
    const int64_t base = num_updates_locked() * record_bytes_;
    int64_t offset;
    if (num_updates_locked() == 0) {
      offset = pending_bytes_;  // The first update lays the record out in its own order.
      pending_layout_[name] = offset;
      pending_bytes_ += static_cast<int64_t>(f.nbytes());
    } else {
      offset = layout_.at(name);  // Checked against the schema by the caller.
    }
    return PwriteFully(fd_, static_cast<const char*>(f.data_ptr()), f.nbytes(), base + offset, options_.spill_path);
  }
  void CommitFloating() override {
    if (num_updates_locked() == 0) {
      layout_ = std::move(pending_layout_);
      record_bytes_ = pending_bytes_;
    }
    pending_layout_.clear();
  }
  bool RollBackFloating() override {
    const int64_t base = num_updates_locked() * record_bytes_;
    if (::ftruncate(fd_, base) != 0) {
      LOG(ERROR) << "truncating spill file " << options_.spill_path << ": " << std::strerror(errno);
      return false;
    }
    pending_layout_.clear();
    return true;
  }
  absl::StatusOr<at::Tensor> FloatingResult(const std::string& name, const at::Tensor& meta) const override {
    const int64_t n = num_updates_locked();
    const at::ScalarType type = AccumulationType(meta.scalar_type());
    const int64_t element = static_cast<int64_t>(c10::elementSize(type));
    const int64_t numel = meta.numel();
    const int64_t offset = layout_.at(name);
    // Per coordinate of a block: n values read, n sorted values and n int64 indices.
    const int64_t per_coordinate = n * (2 * element + 8);
    const int64_t block = std::max<int64_t>(1, std::min(numel, options_.spill_block_bytes / per_coordinate));
    at::Tensor out = at::empty({numel}, at::TensorOptions().dtype(type));
    at::Tensor rows = at::empty({n, block}, at::TensorOptions().dtype(type));
    for (int64_t start = 0; start < numel; start += block) {
      const int64_t count = std::min(block, numel - start);
      at::Tensor part = count == block ? rows : rows.narrow(1, 0, count).contiguous();
      char* data = static_cast<char*>(part.data_ptr());
      for (int64_t site = 0; site < n; ++site) {
        RETURN_IF_ERROR(PreadFully(fd_, data + site * count * element, static_cast<size_t>(count * element),
                                   site * record_bytes_ + offset + start * element, options_.spill_path));
      }
      out.narrow(0, start, count).copy_(OrderStatistic(options_, part));
    }
    return out.view(meta.sizes());
  }
  int64_t FloatingBytes() const override { return 0; }
  int64_t SpilledBytesLocked() const override { return num_updates_locked() * record_bytes_; }
  std::string MethodDescription() const override { return OrderStatisticDescription(options_); }

 private:
  SpillingOrderStatisticAggregator(const AggregatorOptions& options, int fd) : AggregatorBase(options), fd_(fd) {}

  const int fd_;
  std::map<std::string, int64_t> layout_ ABSL_GUARDED_BY(mu_);  // Byte offset of each floating tensor in a record.
  int64_t record_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> pending_layout_ ABSL_GUARDED_BY(mu_);  // The first update's, while it is added.
  int64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
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
      [[fallthrough]];
    case AggregationMethod::kMedian:
      if (!options.spill_path.empty()) return SpillingOrderStatisticAggregator::Create(options);
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

absl::Status FedAdam::StepInPlace(TensorMap& delta) {
  const std::string what = absl::StrCat("FedAdam round ", rounds_ + 1);
  try {
    absl::Status status = CheckDelta(schema_, delta, 1, what);
    if (!status.ok()) return status;
    // Every check before the state changes: it is then updated in place.
    for (const auto& [name, d] : delta) {
      if (!IsFloating(d) || IsBatchNormStatistic(name)) continue;
      for (const TensorMap* state : {&m_, &v_}) {
        auto it = state->find(name);
        if (it != state->end() && it->second.sizes() != d.sizes()) {
          return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' has shape ", ShapeString(d),
                                                         ", the optimizer state's is ", ShapeString(it->second)));
        }
      }
    }
    const double b1 = options_.beta1, b2 = options_.beta2;
    std::set<std::string> trained;
    for (auto& [name, d] : delta) {
      if (!IsFloating(d) || IsBatchNormStatistic(name)) {
        d = d.detach().to(at::kCPU);  // Its step is itself.
        continue;
      }
      const at::Tensor g = d.detach().to(at::kCPU, at::kFloat);
      auto mi = m_.find(name);
      if (mi == m_.end()) mi = m_.emplace(name, at::zeros_like(g)).first;
      auto vi = v_.find(name);
      if (vi == v_.end()) vi = v_.emplace(name, at::full_like(g, options_.tau * options_.tau)).first;
      // The same operations as m_old.mul(b1).add_(g, 1 - b1) on a copy: the same bits.
      at::Tensor& m = mi->second;
      at::Tensor& v = vi->second;
      m.mul_(b1).add_(g, 1.0 - b1);
      v.mul_(b2).addcmul_(g, g, 1.0 - b2);
      at::Tensor s = m.div(v.sqrt().add_(options_.tau)).mul_(options_.learning_rate);
      // Into the delta's own memory (g, which may share it, is not used any more): the same bits as s.to(dtype).
      if (d.device().is_cpu() && d.is_contiguous()) {
        d.copy_(s);
      } else {
        d = s.to(d.scalar_type()).contiguous();
      }
      trained.insert(name);
    }
    // State of tensors this delta does not train (a restored state of another model) goes, as before.
    for (TensorMap* state : {&m_, &v_}) {
      for (auto it = state->begin(); it != state->end();) {
        it = trained.count(it->first) > 0 ? std::next(it) : state->erase(it);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
  if (schema_.empty()) schema_ = SchemaOf(delta);
  ++rounds_;
  return absl::OkStatus();
}

absl::StatusOr<TensorMap> FedAdam::Step(const TensorMap& delta) {
  TensorMap step;
  try {
    for (const auto& [name, d] : delta) step.emplace(name, d.defined() ? d.detach().to(at::kCPU).clone() : d);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("FedAdam round ", rounds_ + 1, ": ", e.what_without_backtrace()));
  }
  RETURN_IF_ERROR(StepInPlace(step));
  return step;
}

TensorMap FedAdam::ExportState() const {
  TensorMap state;
  for (const auto& [name, t] : m_) state.emplace("m/" + name, t.clone());
  for (const auto& [name, t] : v_) state.emplace("v/" + name, t.clone());
  return state;
}

TensorMap FedAdam::StateView() const {
  TensorMap state;
  for (const auto& [name, t] : m_) state.emplace("m/" + name, t);
  for (const auto& [name, t] : v_) state.emplace("v/" + name, t);
  return state;
}

absl::Status FedAdam::RestoreState(TensorMap state, int64_t rounds) {
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
      // Nobody else holds this tensor or its storage: no copy needed (unless a conversion makes one anyway).
      const bool only_here = t.use_count() == 1 && t.storage().use_count() == 1;
      at::Tensor f = t.detach().to(at::kCPU, at::kFloat).contiguous();
      if (!only_here && f.data_ptr() == t.data_ptr()) f = f.clone();
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
