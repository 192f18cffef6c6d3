// Helpers shared by the coordinator tests: a tiny model checkpoint, deltas against it written as update payloads
// (serialized TensorBundles), and a fake clock.
#ifndef FEDTUNE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_
#define FEDTUNE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "absl/time/time.h"
#include "common/federation/states.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/model/checkpoint.h"
#include "coordinator/round_manager.h"
#include "gtest/gtest.h"
#include "site_agent/commands/model_init.h"

namespace fedtune::coordinator::testing {

// A fake clock shared by value-capturing lambdas.
class FakeClock {
 public:
  absl::Time Now() const { return absl::FromUnixMillis(ms_.load()); }
  void Advance(absl::Duration d) { ms_ += absl::ToInt64Milliseconds(d); }
  std::function<absl::Time()> AsFunction() {
    return [this] { return Now(); };
  }

 private:
  std::atomic<int64_t> ms_{1'700'000'000'000};
};

// Writes a tiny MobileNetV2 checkpoint (32 px) to `path`; returns its tensors.
inline fl::TensorMap WriteTinyModel(const std::string& path, uint64_t seed = 7) {
  absl::StatusOr<model::Checkpoint> checkpoint = agent::InitCheckpoint({"mobilenet_v2_tiny"}, 32, 0.0, seed);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<std::string> saved = model::SaveCheckpoint(&*checkpoint, path);
  EXPECT_TRUE(saved.ok()) << saved.status();
  fl::TensorMap tensors = fl::CheckpointTensors(*checkpoint);
  for (auto& [name, t] : tensors) t = t.clone();
  return tensors;
}

// A delta with every floating element equal to `value` (integer tensors: 0).
inline fl::TensorMap ConstantDelta(const fl::TensorMap& global, double value) {
  fl::TensorMap delta;
  for (const auto& [name, t] : global) {
    delta[name] = fl::IsFloating(t) ? at::full_like(t, value) : at::zeros_like(t);
  }
  return delta;
}

// The serialized fp32 TensorBundle of `delta`.
inline std::string EncodeDelta(const fl::TensorMap& delta) {
  absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(delta);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  return encoded.ok() ? encoded->bundle.SerializeAsString() : "";
}

// A payload whose first fp32 tensor's first value is NaN (EncodeTensors refuses non-finite values: edited).
inline std::string NanPayload(const fl::TensorMap& global) {
  absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(ConstantDelta(global, 0.01));
  EXPECT_TRUE(encoded.ok());
  for (v1::NamedTensor& t : *encoded->bundle.mutable_tensors()) {
    if (t.encoding() == v1::NamedTensor::DENSE_FP32 && t.data().size() >= 4) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(t.mutable_data()->data(), &nan, 4);
      break;
    }
  }
  return encoded->bundle.SerializeAsString();
}

// A payload whose first multi-dimensional tensor is flattened (same data, wrong shape).
inline std::string WrongShapePayload(const fl::TensorMap& global) {
  absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(ConstantDelta(global, 0.01));
  EXPECT_TRUE(encoded.ok());
  for (v1::NamedTensor& t : *encoded->bundle.mutable_tensors()) {
    if (t.shape_size() > 1) {
      int64_t n = 1;
      for (int64_t d : t.shape()) n *= d;
      t.clear_shape();
      t.add_shape(n);
      break;
    }
  }
  return encoded->bundle.SerializeAsString();
}

// The first floating tensor's first value.
inline double FirstValue(const fl::TensorMap& tensors, std::string* name = nullptr) {
  for (const auto& [n, t] : tensors) {
    if (fl::IsFloating(t) && !fl::IsBatchNormStatistic(n) && t.numel() > 0) {
      if (name != nullptr) *name = n;
      return t.flatten()[0].item<double>();
    }
  }
  return std::nan("");
}

// The tensors of a checkpoint file.
inline fl::TensorMap LoadTensors(const std::string& path) {
  absl::StatusOr<model::Checkpoint> checkpoint = model::LoadCheckpoint(path);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (!checkpoint.ok()) return {};
  fl::TensorMap tensors = fl::CheckpointTensors(*checkpoint);
  for (auto& [name, t] : tensors) t = t.clone();
  return tensors;
}

// A whole upload as a stream would make it: PrepareUpload, the payload into the spool file, AcceptUpload (or the
// earlier acceptance when the payload was accepted before).
inline absl::StatusOr<v1::UploadResponse> UploadWhole(RoundManager& manager, const std::string& site,
                                                      const std::string& run, int round, const std::string& payload,
                                                      int64_t samples = 10) {
  const std::string sha = io::Sha256Hex(payload);
  absl::StatusOr<UploadTarget> target = manager.PrepareUpload(site, run, round, sha);
  if (!target.ok()) return target.status();
  v1::UploadHeader header;
  header.set_run_id(run);
  header.set_round(round);
  header.set_total_bytes(static_cast<int64_t>(payload.size()));
  header.set_sha256(sha);
  header.set_num_samples(samples);
  if (target->accepted) {
    v1::UploadResponse response;
    federation::SetStatus(federation::UploadStatus::kAccepted, &response);
    return response;
  }
  EXPECT_TRUE(io::WriteFileAtomically(target->spool_path, payload).ok());
  return manager.AcceptUpload(site, header, *target, sha);
}

}  // namespace fedtune::coordinator::testing

#endif  // FEDTUNE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_
