#include "common/fl/validate.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
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

// The float32 fast path (one pass over the values): the norm equals a float64 reference on lengths that are not a
// multiple of its four lanes, and non-finite values are counted wherever they sit, the tail included.
TEST(UpdateValidatorTest, Float32NormAndNonFiniteCountOverEveryLane) {
  for (int64_t n : {1, 3, 4, 5, 1001}) {
    TensorMap global{{"w", at::zeros({n}, at::kFloat)}};
    at::Tensor x = at::randn({n}, at::kFloat);
    const double reference = std::sqrt(x.to(at::kDouble).pow(2).sum().item<double>());
    absl::StatusOr<UpdateSummary> ok = ValidateUpdate(global, {{"w", x}});
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_NEAR(ok->l2_norm, reference, 1e-12 * reference) << n;
    at::Tensor bad = x.clone();
    bad[n - 1] = NAN;  // The last value: the tail loop when n % 4 != 0.
    if (n > 2) bad[1] = -INFINITY;
    const int64_t expected = n > 2 ? 2 : 1;
    absl::Status s = ValidateUpdate(global, {{"w", bad}}).status();
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("'w' has ", expected, " non-finite"))) << n;
  }
  // A non-contiguous float32 tensor takes the general path, with the same answer.
  at::Tensor m = at::randn({6, 5}, at::kFloat);
  TensorMap global{{"m", at::zeros({5, 6}, at::kFloat)}};
  absl::StatusOr<UpdateSummary> t = ValidateUpdate(global, {{"m", m.t()}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_NEAR(t->l2_norm, std::sqrt(m.to(at::kDouble).pow(2).sum().item<double>()), 1e-12);
}

TEST(UpdateValidatorTest, TensorByTensorInAnyOrderEqualsValidateUpdate) {
  // Random deltas over a few shapes, added in reverse order: the same summary, bit for bit.
  TensorMap global;
  global["a.weight"] = at::zeros({31, 17}, at::kFloat);
  global["a.bias"] = at::zeros({31}, at::kFloat);
  global["b.weight"] = at::zeros({5, 3, 3}, at::kDouble);
  global["bn.running_mean"] = at::zeros({9}, at::kFloat);
  global["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(0), at::kLong);
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    TensorMap delta;
    for (const auto& [name, t] : global) {
      delta[name] = IsFloating(t) ? test_tensors::Randn(t.sizes().vec(), seed * 31 + name.size()).to(t.scalar_type())
                                  : at::scalar_tensor(static_cast<int64_t>(seed), at::kLong);
    }
    absl::StatusOr<UpdateSummary> whole = ValidateUpdate(global, delta);
    ASSERT_TRUE(whole.ok()) << whole.status();
    UpdateValidator validator(global, {}, "update");
    for (auto it = delta.rbegin(); it != delta.rend(); ++it) ASSERT_TRUE(validator.Add(it->first, it->second).ok());
    absl::StatusOr<UpdateSummary> streamed = validator.Finish();
    ASSERT_TRUE(streamed.ok()) << streamed.status();
    EXPECT_EQ(streamed->l2_norm, whole->l2_norm) << seed;  // Exactly: the squares are summed in name order.
    EXPECT_EQ(streamed->num_elements, whole->num_elements);
    EXPECT_EQ(streamed->largest_tensor, whole->largest_tensor);
    EXPECT_EQ(streamed->largest_tensor_norm, whole->largest_tensor_norm);
  }
}

TEST(UpdateValidatorTest, RefusesEachBadTensorAsItComesAndMissingOnesAtTheEnd) {
  const TensorMap global = Global();
  const TensorMap good = Delta();
  {
    UpdateValidator v(global, {}, "update from site-a");
    absl::Status s = v.Add("extra.weight", Vec({1.0f}));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("update from site-a: tensor 'extra.weight' is not a tensor of the model"));
    ASSERT_TRUE(v.Add("fc.bias", good.at("fc.bias")).ok());
    s = v.Add("fc.bias", good.at("fc.bias"));
    EXPECT_THAT(s.message(), HasSubstr("'fc.bias' occurs twice"));
    EXPECT_THAT(v.Add("conv.weight", Vec({1.0f, 2.0f})).message(), HasSubstr("'conv.weight' has shape [2]"));
    s = v.Add("bn.running_var", Vec({NAN, 1.0f}));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("'bn.running_var' has 1 non-finite value(s)"));
    s = v.Finish().status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("missing"));
    EXPECT_THAT(s.message(), HasSubstr("conv.weight"));
  }
  {
    ValidationOptions bound;
    bound.max_l2_norm = 4.99;
    UpdateValidator v(global, bound, "update from site-c");
    for (const auto& [name, t] : good) ASSERT_TRUE(v.Add(name, t).ok());
    absl::Status s = v.Finish().status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("L2 norm 5 exceeds the bound 4.99"));
  }
}

}  // namespace
}  // namespace fedtune::fl
