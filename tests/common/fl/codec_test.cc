#include "common/fl/codec.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"

namespace fedtune::fl {
namespace {

using test_tensors::Randn;
using test_tensors::ToVec;
using test_tensors::Vec;
using ::testing::HasSubstr;
using v1::NamedTensor;

TensorMap SmallModel(uint64_t seed) {
  TensorMap m;
  m["conv.weight"] = Randn({4, 3, 3, 3}, seed);
  m["fc.bias"] = Randn({14}, seed + 1);
  m["scalar"] = at::scalar_tensor(2.5, at::kFloat);
  m["empty"] = at::zeros({0, 5}, at::kFloat);
  m["bn.running_mean"] = Randn({4}, seed + 2);
  m["bn.running_var"] = Randn({4}, seed + 3).abs() + 0.5;
  m["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(1234567890123LL), at::kLong);
  return m;
}

absl::StatusOr<TensorMap> RoundTrip(const TensorMap& m, EncodeOptions options) {
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, options);
  if (!enc.ok()) return enc.status();
  std::string wire = enc->bundle.SerializeAsString();
  EXPECT_EQ(static_cast<int64_t>(wire.size()), enc->encoded_bytes);
  absl::StatusOr<v1::TensorBundle> parsed = ParseTensorBundle(wire);
  if (!parsed.ok()) return parsed.status();
  return DecodeTensors(*parsed);
}

TEST(CodecTest, Fp32IsExactWithShapesDtypesAndIntegerBuffers) {
  TensorMap m = SmallModel(1);
  m["half.weight"] = Randn({3, 2}, 9).to(at::kHalf);
  m["count32"] = at::tensor({7, -3}, at::kInt);
  absl::StatusOr<TensorMap> out = RoundTrip(m, {});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), m.size());
  for (const auto& [name, t] : m) {
    const at::Tensor& got = out->at(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
  EXPECT_EQ(out->at("bn.num_batches_tracked").item<int64_t>(), 1234567890123LL);
}

TEST(CodecTest, Fp16WithinHalfPrecisionAndSaturates) {
  TensorMap m;
  m["w"] = Randn({1000}, 3);
  m["big"] = Vec({1e5f, -1e6f, 65504.0f, 1.0f});
  absl::StatusOr<TensorMap> out = RoundTrip(m, {Encoding::kDenseFp16});
  ASSERT_TRUE(out.ok()) << out.status();
  // Normal half range: relative error <= 2^-11 (round to nearest with 10 mantissa bits).
  at::Tensor w = m["w"];
  at::Tensor mask = w.abs() > 6.2e-5;
  double max_rel = ((out->at("w") - w).abs() / w.abs()).masked_select(mask).max().item<double>();
  EXPECT_LE(max_rel, std::pow(2.0, -11));
  EXPECT_GT(max_rel, 0.0);  // It is lossy.
  EXPECT_EQ(ToVec(out->at("big")), (std::vector<float>{65504.0f, -65504.0f, 65504.0f, 1.0f}));
}

TEST(CodecTest, Int8HandValues) {
  TensorMap m;
  m["w"] = Vec({1.27f, -0.635f, 0.0f, 0.3f, -1.27f});
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, {Encoding::kInt8});
  ASSERT_TRUE(enc.ok()) << enc.status();
  const NamedTensor& t = enc->bundle.tensors(0);
  EXPECT_EQ(t.encoding(), NamedTensor::INT8);
  EXPECT_FLOAT_EQ(t.scale(), 0.01f);
  ASSERT_EQ(t.data().size(), 5u);
  std::vector<int> q;
  for (char c : t.data()) q.push_back(static_cast<signed char>(c));
  EXPECT_EQ(q, (std::vector<int>{127, -64, 0, 30, -127}));  // -63.5 rounds away from zero.
  absl::StatusOr<at::Tensor> back = DecodeTensor(t);
  ASSERT_TRUE(back.ok()) << back.status();
  std::vector<float> v = ToVec(*back);
  EXPECT_NEAR(v[0], 1.27f, 1e-6);
  EXPECT_NEAR(v[1], -0.64f, 1e-6);
  EXPECT_NEAR(v[3], 0.30f, 1e-6);
}

TEST(CodecTest, Int8ErrorBoundedByHalfScaleAndZeroTensor) {
  TensorMap m;
  m["w"] = Randn({5000}, 4);
  m["zero"] = at::zeros({10}, at::kFloat);
  absl::StatusOr<TensorMap> out = RoundTrip(m, {Encoding::kInt8});
  ASSERT_TRUE(out.ok()) << out.status();
  const double scale = m["w"].abs().max().item<double>() / 127.0;
  EXPECT_LE((out->at("w") - m["w"]).abs().max().item<double>(), scale / 2 + 1e-6);
  EXPECT_TRUE(at::equal(out->at("zero"), m["zero"]));
}

TEST(CodecTest, TopKKeepsLargestMagnitudes) {
  TensorMap m;
  m["w"] = Vec({0.1f, -5.0f, 3.0f, 0.2f, -0.05f, 4.0f});
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, {Encoding::kTopK, 0.5});
  ASSERT_TRUE(enc.ok()) << enc.status();
  const NamedTensor& t = enc->bundle.tensors(0);
  EXPECT_EQ(t.encoding(), NamedTensor::TOPK);
  EXPECT_EQ(std::vector<uint32_t>(t.indices().begin(), t.indices().end()), (std::vector<uint32_t>{1, 2, 5}));
  absl::StatusOr<at::Tensor> back = DecodeTensor(t);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ToVec(*back), (std::vector<float>{0.0f, -5.0f, 3.0f, 0.0f, 0.0f, 4.0f}));
  // 1% of 100 elements is exactly one element, at least one is always kept.
  TensorMap n;
  n["a"] = Randn({100}, 5);
  n["b"] = Vec({2.0f, -3.0f});
  enc = EncodeTensors(n, {Encoding::kTopK, 0.01});
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->bundle.tensors(0).indices_size(), 1);
  EXPECT_EQ(enc->bundle.tensors(1).indices_size(), 1);
  EXPECT_EQ(enc->bundle.tensors(1).indices(0), 1u);
  EXPECT_FALSE(EncodeTensors(n, {Encoding::kTopK, 0.0}).ok());
  EXPECT_FALSE(EncodeTensors(n, {Encoding::kTopK, 1.5}).ok());
}

TEST(CodecTest, BatchNormStatisticsAlwaysDense) {
  TensorMap m = SmallModel(6);
  for (Encoding e : {Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK}) {
    absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, {e, 0.1});
    ASSERT_TRUE(enc.ok()) << enc.status();
    for (const NamedTensor& t : enc->bundle.tensors()) {
      if (t.name() == "bn.running_mean" || t.name() == "bn.running_var") {
        EXPECT_EQ(t.encoding(), NamedTensor::DENSE_FP32) << t.name();
      } else if (t.name() == "bn.num_batches_tracked") {
        EXPECT_EQ(t.encoding(), NamedTensor::DENSE_INT64);
      } else if (t.name() == "conv.weight") {
        EXPECT_NE(t.encoding(), NamedTensor::DENSE_FP32) << EncodingName(e);
      }
    }
    absl::StatusOr<TensorMap> out = DecodeTensors(enc->bundle);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(at::equal(out->at("bn.running_var"), m["bn.running_var"])) << EncodingName(e);
    EXPECT_TRUE(at::equal(out->at("bn.num_batches_tracked"), m["bn.num_batches_tracked"]));
  }
}

TEST(CodecTest, EncodedSizes) {
  TensorMap m;
  m["w"] = Randn({100, 100}, 7);
  std::vector<int64_t> sizes;
  for (Encoding e : {Encoding::kDenseFp32, Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK}) {
    absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, {e, 0.01});
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->dense_fp32_bytes, 40000);
    EXPECT_EQ(enc->num_tensors, 1);
    sizes.push_back(enc->encoded_bytes);
  }
  // Payload plus a few bytes of framing (name, shape, enums, lengths).
  EXPECT_GE(sizes[0], 40000);
  EXPECT_LE(sizes[0], 40020);
  EXPECT_GE(sizes[1], 20000);
  EXPECT_LE(sizes[1], 20020);
  EXPECT_GE(sizes[2], 10000);
  EXPECT_LE(sizes[2], 10025);
  // 100 values (400 bytes) + 100 varint indices < 2^14 (at most 2 bytes each).
  EXPECT_GE(sizes[3], 400 + 100);
  EXPECT_LE(sizes[3], 400 + 200 + 30);
}

TEST(CodecTest, EncodeRefusesNonFiniteAndUnsupported) {
  TensorMap m;
  m["w"] = Vec({1.0f, NAN});
  absl::Status s = EncodeTensors(m).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w'"));
  TensorMap b;
  b["mask"] = at::ones({2}, at::kBool);
  s = EncodeTensors(b).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'mask'"));
}

// A valid encoded tensor to corrupt.
NamedTensor Encoded(Encoding e, std::vector<float> values, const std::string& name = "layer.weight") {
  TensorMap m;
  m[name] = Vec(values);
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, {e, 0.5});
  EXPECT_TRUE(enc.ok()) << enc.status();
  return enc->bundle.tensors(0);
}

void ExpectInvalid(const NamedTensor& t, const std::string& fragment) {
  absl::Status s = DecodeTensor(t).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << fragment << ": " << s;
  EXPECT_THAT(s.message(), HasSubstr("'layer.weight'"));
  EXPECT_THAT(s.message(), HasSubstr(fragment));
}

TEST(CodecTest, DecodeValidates) {
  NamedTensor t = Encoded(Encoding::kDenseFp32, {1, 2, 3, 4});
  ASSERT_TRUE(DecodeTensor(t).ok());

  NamedTensor bad = t;
  bad.set_encoding(static_cast<NamedTensor::Encoding>(42));
  ExpectInvalid(bad, "unknown encoding 42");
  bad = t;
  bad.set_encoding(NamedTensor::ENCODING_UNSPECIFIED);
  ExpectInvalid(bad, "unknown encoding 0");
  bad = t;
  bad.set_dtype(NamedTensor::DTYPE_UNSPECIFIED);
  ExpectInvalid(bad, "unknown dtype");
  bad = t;
  bad.mutable_data()->pop_back();
  ExpectInvalid(bad, "data has 15 bytes");
  bad = t;
  bad.set_shape(0, 5);
  ExpectInvalid(bad, "needs 20");
  bad = t;
  bad.set_shape(0, -4);
  ExpectInvalid(bad, "negative dimension");
  bad = t;
  float nan = NAN;
  bad.mutable_data()->replace(4, 4, reinterpret_cast<const char*>(&nan), 4);
  ExpectInvalid(bad, "non-finite");
  bad = t;
  bad.set_dtype(NamedTensor::INT64);
  ExpectInvalid(bad, "integer dtype");
  bad = t;
  bad.set_dtype(NamedTensor::FLOAT16);
  float huge = 1e6f;
  bad.mutable_data()->replace(0, 4, reinterpret_cast<const char*>(&huge), 4);
  ExpectInvalid(bad, "out of float16 range");

  NamedTensor k = Encoded(Encoding::kTopK, {0.0f, 9.0f, 0.0f, -8.0f});
  ASSERT_EQ(k.indices_size(), 2);
  bad = k;
  bad.set_indices(1, 4);
  ExpectInvalid(bad, "out of range");
  bad = k;
  bad.set_indices(1, 1);
  ExpectInvalid(bad, "strictly increasing");
  bad = k;
  bad.add_indices(3);
  ExpectInvalid(bad, "data has 8 bytes");

  NamedTensor q = Encoded(Encoding::kInt8, {1.0f, -0.5f});
  bad = q;
  bad.set_scale(-1.0f);
  ExpectInvalid(bad, "invalid int8 scale");
  bad = q;
  bad.set_scale(INFINITY);
  ExpectInvalid(bad, "invalid int8 scale");
  bad = q;
  (*bad.mutable_data())[0] = static_cast<char>(-128);
  ExpectInvalid(bad, "-128");

  v1::TensorBundle twice;
  *twice.add_tensors() = t;
  *twice.add_tensors() = t;
  absl::Status s = DecodeTensors(twice).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("occurs twice"));

  EXPECT_EQ(ParseTensorBundle("\xff\xff\xff garbage", "upload of site-a").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ParseTensorBundle("\xff\xff\xff garbage", "upload of site-a").status().message(), HasSubstr("site-a"));
}

// Shapes of empty tensors whose strides overflow int64, and shapes with absurdly many dimensions, are malformed
// input (InvalidArgument), not an internal error or undefined behaviour in LibTorch's stride computation.
TEST(CodecTest, DecodeRefusesUnrepresentableShapes) {
  for (NamedTensor::Encoding encoding : {NamedTensor::DENSE_FP32, NamedTensor::DENSE_FP16, NamedTensor::INT8,
                                         NamedTensor::TOPK, NamedTensor::DENSE_INT64}) {
    NamedTensor t;
    t.set_name("layer.weight");
    t.set_dtype(encoding == NamedTensor::DENSE_INT64 ? NamedTensor::INT64 : NamedTensor::FLOAT32);
    t.set_encoding(encoding);
    for (int64_t d : {int64_t{0}, int64_t{1} << 62, int64_t{1} << 62}) t.add_shape(d);
    ExpectInvalid(t, "shape");
    t.clear_shape();
    for (int k = 0; k <= 64; ++k) t.add_shape(k == 0 ? 0 : 1);
    ExpectInvalid(t, "dimensions");
  }
  // An empty tensor of a representable shape decodes.
  NamedTensor empty;
  empty.set_name("e");
  empty.set_dtype(NamedTensor::FLOAT32);
  empty.set_encoding(NamedTensor::DENSE_FP32);
  empty.add_shape(0);
  empty.add_shape(1 << 20);
  absl::StatusOr<at::Tensor> decoded = DecodeTensor(empty);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->sizes(), (std::vector<int64_t>{0, 1 << 20}));
}

TEST(CodecTest, DecodeAgainstTheModelSchema) {
  const TensorMap model = SmallModel(11);
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(model, {Encoding::kTopK, 0.5});
  ASSERT_TRUE(enc.ok()) << enc.status();
  absl::StatusOr<TensorMap> out = DecodeTensors(enc->bundle, &model);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->size(), model.size());

  // A tiny TOPK message claiming a huge dense size is refused before anything is allocated.
  int conv_index = 0;
  while (enc->bundle.tensors(conv_index).name() != "conv.weight") ++conv_index;
  v1::TensorBundle huge = enc->bundle;
  NamedTensor* conv = huge.mutable_tensors(conv_index);
  ASSERT_EQ(conv->name(), "conv.weight");
  conv->clear_shape();
  conv->add_shape(int64_t{1} << 20);
  conv->add_shape(int64_t{1} << 20);
  absl::Status s = DecodeTensors(huge, &model).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'conv.weight': shape [1048576, 1048576], the model's is [4, 3, 3, 3]"));
  s = DecodeTensors(huge).status();  // Without a schema, the uint32 index bound still applies.
  EXPECT_THAT(s.message(), HasSubstr("too many for TOPK"));

  v1::TensorBundle wrong_dtype = enc->bundle;
  wrong_dtype.mutable_tensors(conv_index)->set_dtype(NamedTensor::FLOAT16);
  EXPECT_THAT(DecodeTensors(wrong_dtype, &model).status().message(),
              HasSubstr("'conv.weight': dtype float16, the model's is float32"));

  v1::TensorBundle missing = enc->bundle;
  missing.mutable_tensors()->DeleteSubrange(conv_index, 1);
  s = DecodeTensors(missing, &model).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("missing conv.weight"));

  v1::TensorBundle extra = enc->bundle;
  extra.mutable_tensors(0)->set_name("intruder.weight");
  s = DecodeTensors(extra, &model).status();
  EXPECT_THAT(s.message(), HasSubstr("'intruder.weight': not a tensor of the model"));
}

TEST(ErrorFeedbackTest, HandValues) {
  ErrorFeedback ef;
  TensorMap d1;
  d1["w"] = Vec({1.0f, 0.1f, 0.2f, 0.0f});
  absl::StatusOr<EncodedBundle> sent = ef.Encode(d1, {Encoding::kTopK, 0.25});
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(ToVec(DecodeTensors(sent->bundle)->at("w")), (std::vector<float>{1.0f, 0.0f, 0.0f, 0.0f}));
  EXPECT_EQ(ToVec(ef.residual().at("w")), (std::vector<float>{0.0f, 0.1f, 0.2f, 0.0f}));

  TensorMap d2;
  d2["w"] = Vec({0.0f, 0.1f, 0.15f, 0.0f});
  sent = ef.Encode(d2, {Encoding::kTopK, 0.25});
  ASSERT_TRUE(sent.ok()) << sent.status();
  std::vector<float> got = ToVec(DecodeTensors(sent->bundle)->at("w"));
  EXPECT_FLOAT_EQ(got[2], 0.35f);  // 0.2 carried over + 0.15
  EXPECT_EQ(got[1], 0.0f);
  std::vector<float> r = ToVec(ef.residual().at("w"));
  EXPECT_FLOAT_EQ(r[1], 0.2f);
  EXPECT_FLOAT_EQ(r[2], 0.0f);

  // A failed encode leaves the residual as it was.
  TensorMap bad;
  bad["w"] = Vec({1.0f, 2.0f});
  EXPECT_EQ(ef.Encode(bad, {Encoding::kTopK, 0.25}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FLOAT_EQ(ToVec(ef.residual().at("w"))[1], 0.2f);
}

TEST(ErrorFeedbackTest, NothingIsLostOverRounds) {
  // sum(sent) + residual == sum(deltas): with error feedback top-k loses nothing in the long run.
  ErrorFeedback ef;
  at::Tensor sum_deltas = at::zeros({2000}, at::kFloat);
  at::Tensor sum_sent = at::zeros({2000}, at::kFloat);
  at::Tensor sum_sent_plain = at::zeros({2000}, at::kFloat);
  for (int round = 0; round < 20; ++round) {
    TensorMap d;
    d["w"] = Randn({2000}, 100 + round);
    d["bn.running_mean"] = Randn({3}, 200 + round);
    sum_deltas += d["w"];
    absl::StatusOr<EncodedBundle> sent = ef.Encode(d, {Encoding::kTopK, 0.05});
    ASSERT_TRUE(sent.ok()) << sent.status();
    sum_sent += DecodeTensors(sent->bundle)->at("w");
    absl::StatusOr<EncodedBundle> plain = EncodeTensors(d, {Encoding::kTopK, 0.05});
    sum_sent_plain += DecodeTensors(plain->bundle)->at("w");
  }
  EXPECT_EQ(ef.residual().count("bn.running_mean"), 0u);
  const double with_ef = (sum_sent + ef.residual().at("w") - sum_deltas).abs().max().item<double>();
  EXPECT_LT(with_ef, 1e-4);
  // The error of what actually arrived: error feedback's is far smaller than plain top-k's.
  const double err_ef = (sum_sent - sum_deltas).norm().item<double>();
  const double err_plain = (sum_sent_plain - sum_deltas).norm().item<double>();
  RecordProperty("error_with_feedback", std::to_string(err_ef));
  RecordProperty("error_plain_topk", std::to_string(err_plain));
  EXPECT_LT(err_ef, 0.7 * err_plain) << err_ef << " vs " << err_plain;

  // Restoring a residual.
  ErrorFeedback other;
  ASSERT_TRUE(other.SetResidual(ef.residual()).ok());
  EXPECT_TRUE(at::equal(other.residual().at("w"), ef.residual().at("w")));
  TensorMap nan_residual;
  nan_residual["w"] = Vec({NAN});
  EXPECT_EQ(other.SetResidual(nan_residual).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CodecTest, ParseEncodingNames) {
  for (Encoding e : {Encoding::kDenseFp32, Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK}) {
    absl::StatusOr<Encoding> parsed = ParseEncoding(EncodingName(e));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, e);
  }
  EXPECT_EQ(ParseEncoding("bf8").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::fl
