#include "common/fl/encoding.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::fl {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using v1::NamedTensor;

constexpr Encoding kAll[] = {Encoding::kDenseFp32, Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK};

TEST(EncodingFieldsTest, ProtoRoundTrip) {
  EXPECT_EQ(ToProto(Encoding::kDenseFp32), NamedTensor::DENSE_FP32);
  EXPECT_EQ(ToProto(Encoding::kDenseFp16), NamedTensor::DENSE_FP16);
  EXPECT_EQ(ToProto(Encoding::kInt8), NamedTensor::INT8);
  EXPECT_EQ(ToProto(Encoding::kTopK), NamedTensor::TOPK);
  for (Encoding e : kAll) {
    absl::StatusOr<Encoding> back = EncodingFromProto(ToProto(e), "f");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, e);
  }
}

TEST(EncodingFieldsTest, NotADeltaEncodingIsInvalidArgumentNamingTheField) {
  for (NamedTensor::Encoding value :
       {NamedTensor::ENCODING_UNSPECIFIED, NamedTensor::DENSE_INT64, static_cast<NamedTensor::Encoding>(77)}) {
    absl::StatusOr<Encoding> e = EncodingFromProto(value, "UploadHeader.delta_encoding");
    ASSERT_FALSE(e.ok()) << value;
    EXPECT_TRUE(absl::IsInvalidArgument(e.status())) << e.status();
    EXPECT_THAT(e.status().message(), HasSubstr("UploadHeader.delta_encoding"));
  }
  EXPECT_THAT(EncodingFromProto(static_cast<NamedTensor::Encoding>(77), "f").status().message(), HasSubstr("77"));
}

TEST(EncodingFieldsTest, PlanWritesBothFormsAndReadsOlderCoordinators) {
  for (Encoding e : kAll) {
    v1::TrainingPlan plan;
    SetEncoding(e, &plan);
    EXPECT_EQ(plan.delta_encoding(), ToProto(e));
    EXPECT_EQ(plan.encoding(), EncodingName(e));
    EXPECT_EQ(GetEncoding(plan).value(), e);
  }
  v1::TrainingPlan older;  // A coordinator of the previous release: text only.
  older.set_encoding("int8");
  EXPECT_EQ(GetEncoding(older).value(), Encoding::kInt8);
  EXPECT_EQ(GetEncoding(v1::TrainingPlan()).value(), Encoding::kDenseFp32);  // Neither set: the old default.

  v1::TrainingPlan odd;
  odd.set_encoding("fp8");
  absl::StatusOr<Encoding> e = GetEncoding(odd);
  ASSERT_FALSE(e.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(e.status()));
  EXPECT_THAT(e.status().message(), AllOf(HasSubstr("TrainingPlan.encoding"), HasSubstr("fp8")));
  v1::TrainingPlan newer;
  newer.set_delta_encoding(static_cast<NamedTensor::Encoding>(9));
  newer.set_encoding("fp32");
  EXPECT_THAT(GetEncoding(newer).status().message(), HasSubstr("TrainingPlan.delta_encoding"));
}

TEST(EncodingFieldsTest, UploadHeaderWritesBothFormsAndReadsOlderSites) {
  v1::UploadHeader header;
  SetEncoding(Encoding::kTopK, &header);
  EXPECT_EQ(header.delta_encoding(), NamedTensor::TOPK);
  EXPECT_EQ(header.encoding(), "topk");
  EXPECT_EQ(GetEncoding(header).value(), Encoding::kTopK);
  v1::UploadHeader older;
  older.set_encoding("fp16");
  EXPECT_EQ(GetEncoding(older).value(), Encoding::kDenseFp16);
  EXPECT_EQ(GetEncoding(v1::UploadHeader()).value(), std::nullopt);
  v1::UploadHeader bad;
  bad.set_delta_encoding(NamedTensor::DENSE_INT64);
  EXPECT_TRUE(absl::IsInvalidArgument(GetEncoding(bad).status()));
}

TEST(EncodingFieldsTest, CapabilitiesListEveryEncodingInBothForms) {
  v1::Capabilities caps;
  SetSupportedEncodings(&caps);
  EXPECT_THAT(caps.encodings(), ElementsAre("fp32", "fp16", "int8", "topk"));
  EXPECT_THAT(caps.delta_encodings(),
              ElementsAre(NamedTensor::DENSE_FP32, NamedTensor::DENSE_FP16, NamedTensor::INT8, NamedTensor::TOPK));
}

}  // namespace
}  // namespace fedtune::fl
