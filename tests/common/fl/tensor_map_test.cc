#include "common/fl/tensor_map.h"

#include <ATen/ATen.h>

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"

namespace fedtune::fl {
namespace {

using test_tensors::Vec;
using ::testing::HasSubstr;

TEST(TensorMapTest, BatchNormNames) {
  EXPECT_TRUE(IsBatchNormStatistic("features.norm0.running_mean"));
  EXPECT_TRUE(IsBatchNormStatistic("bn1.running_var"));
  EXPECT_TRUE(IsBatchNormStatistic("bn1.num_batches_tracked"));
  EXPECT_FALSE(IsBatchNormStatistic("bn1.weight"));
  EXPECT_FALSE(IsBatchNormStatistic("running_mean.weight"));
}

TEST(TensorMapTest, DeltaAndApplyRoundTrip) {
  TensorMap global, local;
  global["w"] = Vec({1.0f, 2.0f});
  local["w"] = Vec({1.5f, 1.0f});
  global["n"] = at::scalar_tensor(static_cast<int64_t>(10), at::kLong);
  local["n"] = at::scalar_tensor(static_cast<int64_t>(13), at::kLong);
  absl::StatusOr<TensorMap> delta = ComputeDelta(local, global);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_TRUE(at::equal(delta->at("w"), Vec({0.5f, -1.0f})));
  EXPECT_EQ(delta->at("n").scalar_type(), at::kLong);
  EXPECT_EQ(delta->at("n").item<int64_t>(), 3);
  absl::StatusOr<TensorMap> back = ApplyDelta(global, *delta);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(at::equal(back->at("w"), local["w"]));
  EXPECT_TRUE(at::equal(back->at("n"), local["n"]));
}

TEST(TensorMapTest, ApplyDeltaInPlaceEqualsApplyDelta) {
  TensorMap global, delta;
  global["w"] = test_tensors::Randn({33, 7}, 1);
  delta["w"] = test_tensors::Randn({33, 7}, 2).mul(1e-3);
  global["h"] = test_tensors::Randn({5}, 3).to(at::kHalf);
  delta["h"] = test_tensors::Randn({5}, 4).to(at::kHalf);
  global["d"] = test_tensors::Randn({4}, 5).to(at::kDouble);
  delta["d"] = test_tensors::Randn({8}, 6).to(at::kDouble).slice(0, 0, 8, 2);  // Not contiguous: replaced.
  global["n"] = at::scalar_tensor(static_cast<int64_t>(10), at::kLong);
  delta["n"] = at::scalar_tensor(static_cast<int64_t>(3), at::kLong);
  absl::StatusOr<TensorMap> expected = ApplyDelta(global, delta);
  ASSERT_TRUE(expected.ok());
  const void* storage = delta["w"].data_ptr();
  ASSERT_TRUE(ApplyDeltaInPlace(global, delta).ok());
  EXPECT_EQ(delta["w"].data_ptr(), storage);  // No new model-sized buffer.
  for (const auto& [name, t] : *expected) {
    EXPECT_EQ(delta[name].scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(delta[name], t)) << name;
  }
  TensorMap wrong = {{"w", Vec({1.0f})}};
  EXPECT_EQ(ApplyDeltaInPlace(global, wrong).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorMapTest, SchemaErrorsNameTensors) {
  TensorMap a, b;
  a["x"] = Vec({1.0f});
  a["y"] = Vec({1.0f});
  b["x"] = Vec({1.0f});
  b["z"] = Vec({1.0f});
  absl::Status s = CheckSameSchema(a, b, "update from site-b");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("update from site-b"));
  EXPECT_THAT(s.message(), HasSubstr("missing y"));
  EXPECT_THAT(s.message(), HasSubstr("unexpected z"));
  b = a;
  b["y"] = Vec({1.0f, 2.0f});
  s = CheckSameSchema(a, b, "u");
  EXPECT_THAT(s.message(), HasSubstr("'y' has shape [2], the model's is [1]"));
  b = a;
  b["y"] = b["y"].to(at::kHalf);
  s = CheckSameSchema(a, b, "u");
  EXPECT_THAT(s.message(), HasSubstr("'y' has dtype float16, the model's is float32"));
  EXPECT_EQ(ApplyDelta(a, b).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorMapTest, L2Norm) {
  TensorMap m;
  m["w"] = Vec({3.0f, 0.0f});
  m["bn.running_var"] = Vec({4.0f});
  m["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(100), at::kLong);
  EXPECT_DOUBLE_EQ(L2Norm(m), 5.0);
  EXPECT_DOUBLE_EQ(L2Norm(m, {/*include_batchnorm_statistics=*/false}), 3.0);
}

}  // namespace
}  // namespace fedtune::fl
