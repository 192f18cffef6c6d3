// The shared delta payloads: written tensor by tensor, they are byte for byte the serialized TensorBundle of the
// whole delta, decode against the model they were made for, and are built once per (encoding, variant).
#include "site_agent/loadgen/delta_payloads.h"

#include <ATen/ATen.h>

#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::loadgen {
namespace {

TEST(DeltaPayloadsTest, VariantsAreTheWholeDeltaEncodedAndDecodeAgainstTheModel) {
  fedtune::testing::TempDir tmp;
  const fl::TensorMap model = coordinator::testing::WriteTinyModel(tmp.Join("model.ckpt"));
  DeltaPayloads payloads(tmp.Join("payloads"), 0.25);
  EXPECT_EQ(payloads.Get(fl::Encoding::kDenseFp32, 0, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(payloads.LearnSchema(tmp.Join("model.ckpt")).ok());
  ASSERT_TRUE(payloads.LearnSchema(tmp.Join("missing.ckpt")).ok());  // Learnt once.
  int64_t elements = 0;
  for (const auto& [name, t] : model) elements += t.numel();
  EXPECT_EQ(payloads.model_elements(), elements);

  for (int variant : {0, 1, 3}) {
    absl::StatusOr<DeltaPayload> payload = payloads.Get(fl::Encoding::kDenseFp32, 0, variant);
    ASSERT_TRUE(payload.ok()) << payload.status();
    absl::StatusOr<std::string> bytes = io::ReadFile(payload->path);
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(static_cast<int64_t>(bytes->size()), payload->bytes);
    EXPECT_EQ(io::Sha256Hex(*bytes), payload->sha256);
    // Byte for byte what a site agent's encoder makes of the whole delta.
    const std::string whole =
        coordinator::testing::EncodeDelta(coordinator::testing::ConstantDelta(model, 0.25 * variant));
    EXPECT_EQ(*bytes, whole) << "variant " << variant;
    absl::StatusOr<v1::TensorBundle> bundle = fl::ParseTensorBundle(*bytes);
    ASSERT_TRUE(bundle.ok());
    absl::StatusOr<fl::TensorMap> decoded = fl::DecodeTensors(*bundle, &model);  // Names, shapes, dtypes match.
    ASSERT_TRUE(decoded.ok()) << decoded.status();
  }
  // Built once: the same file and digest on the next request.
  absl::StatusOr<DeltaPayload> a = payloads.Get(fl::Encoding::kDenseFp32, 0, 1);
  absl::StatusOr<DeltaPayload> b = payloads.Get(fl::Encoding::kDenseFp32, 0, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->path, b->path);
  EXPECT_EQ(a->sha256, b->sha256);

  for (fl::Encoding encoding : {fl::Encoding::kDenseFp16, fl::Encoding::kInt8, fl::Encoding::kTopK}) {
    absl::StatusOr<DeltaPayload> payload = payloads.Get(encoding, 0.05, 1);
    ASSERT_TRUE(payload.ok()) << payload.status();
    EXPECT_LT(payload->bytes, a->bytes) << fl::EncodingName(encoding);
    absl::StatusOr<v1::TensorBundle> bundle = fl::ParseTensorBundle(*io::ReadFile(payload->path));
    ASSERT_TRUE(bundle.ok());
    EXPECT_TRUE(fl::DecodeTensors(*bundle, &model).ok()) << fl::EncodingName(encoding);
  }
}

}  // namespace
}  // namespace fedtune::loadgen
