#include "common/fl/validate.h"

#include <ATen/ATen.h>

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"

namespace fedtune::fl {
namespace {

using test_tensors::Vec;
using ::testing::HasSubstr;

TensorMap Global() {
  TensorMap m;
  m["conv.weight"] = at::zeros({2, 2}, at::kFloat);
  m["fc.bias"] = at::zeros({3}, at::kFloat);
  m["bn.running_var"] = at::ones({2}, at::kFloat);
  m["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(7), at::kLong);
  return m;
}

TensorMap Delta() {
  TensorMap m;
  m["conv.weight"] = Vec({1.0f, 2.0f, 2.0f, 0.0f}).reshape({2, 2});  // norm 3
  m["fc.bias"] = Vec({0.0f, 0.0f, 0.0f});
  m["bn.running_var"] = Vec({4.0f, 0.0f});                                                 // norm 4
  m["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(1000), at::kLong);  // never counts
  return m;
}

TEST(ValidateTest, AcceptsAndReturnsNorm) {
  absl::StatusOr<UpdateSummary> s = ValidateUpdate(Global(), Delta(), {/*max_l2_norm=*/5.0});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->l2_norm, 5.0);
  EXPECT_EQ(s->num_elements, 10);
  EXPECT_EQ(s->largest_tensor, "bn.running_var");
  EXPECT_DOUBLE_EQ(s->largest_tensor_norm, 4.0);
  ValidationOptions no_bn;
  no_bn.norm.include_batchnorm_statistics = false;
  s = ValidateUpdate(Global(), Delta(), no_bn);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->l2_norm, 3.0);
}

TEST(ValidateTest, NormBoundIsFailedPrecondition) {
  absl::Status s = ValidateUpdate(Global(), Delta(), {/*max_l2_norm=*/4.99}, "update from site-c").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("site-c"));
  EXPECT_THAT(s.message(), HasSubstr("L2 norm 5 exceeds the bound 4.99"));
  EXPECT_THAT(s.message(), HasSubstr("'bn.running_var'"));
}

TEST(ValidateTest, SchemaAndFiniteness) {
  TensorMap d = Delta();
  d.erase("fc.bias");
  d["extra.weight"] = Vec({1.0f});
  absl::Status s = ValidateUpdate(Global(), d, {}, "update from site-a").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("missing fc.bias"));
  EXPECT_THAT(s.message(), HasSubstr("unexpected extra.weight"));

  d = Delta();
  d["fc.bias"] = Vec({0.0f, 0.0f});
  s = ValidateUpdate(Global(), d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'fc.bias' has shape [2]"));

  d = Delta();
  d["bn.num_batches_tracked"] = d["bn.num_batches_tracked"].to(at::kInt);
  s = ValidateUpdate(Global(), d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("dtype int32"));

  d = Delta();
  d["fc.bias"] = Vec({0.0f, NAN, INFINITY});
  s = ValidateUpdate(Global(), d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'fc.bias' has 2 non-finite"));
}

}  // namespace
}  // namespace fedtune::fl
