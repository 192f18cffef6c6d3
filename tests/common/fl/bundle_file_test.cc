#include "common/fl/bundle_file.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fl/codec.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::fl {
namespace {

using test_tensors::Randn;
using ::testing::HasSubstr;

TensorMap Model() {
  TensorMap m;
  m["a.weight"] = Randn({64, 32}, 1);
  m["a.bias"] = Randn({64}, 2);
  m["bn.running_var"] = Randn({8}, 3).abs();
  m["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(42), at::kLong);
  m["z.empty"] = at::zeros({0}, at::kFloat);
  return m;
}

std::string Serialized(const TensorMap& m, EncodeOptions options = {}) {
  absl::StatusOr<EncodedBundle> enc = EncodeTensors(m, options);
  EXPECT_TRUE(enc.ok()) << enc.status();
  return enc->bundle.SerializeAsString();
}

TEST(BundleFileTest, ReadsTensorByTensor) {
  fedtune::testing::TempDir dir;
  const TensorMap m = Model();
  const std::string path = dir.WriteFile("delta.bundle", Serialized(m));
  std::vector<std::string> names;
  ASSERT_TRUE(ForEachNamedTensorInFile(path, [&](v1::NamedTensor& t) {
                names.push_back(t.name());
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(names,
            (std::vector<std::string>{"a.bias", "a.weight", "bn.num_batches_tracked", "bn.running_var", "z.empty"}));
  absl::StatusOr<TensorMap> back = DecodeTensorBundleFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  for (const auto& [name, t] : m) EXPECT_TRUE(at::equal(back->at(name), t)) << name;

  // Lossy encodings go through the same reader.
  const std::string int8 = dir.WriteFile("int8.bundle", Serialized(m, {Encoding::kInt8}));
  back = DecodeTensorBundleFile(int8);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_LT((back->at("a.weight") - m.at("a.weight")).abs().max().item<double>(), 0.03);

  // Against the model's schema.
  back = DecodeTensorBundleFile(path, &m);
  ASSERT_TRUE(back.ok()) << back.status();
  TensorMap other = m;
  other["a.bias"] = at::zeros({65}, at::kFloat);
  absl::Status mismatch = DecodeTensorBundleFile(path, &other).status();
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.message(), HasSubstr("'a.bias': shape [64], the model's is [65]"));
  other = m;
  other["b.weight"] = at::zeros({1}, at::kFloat);
  mismatch = DecodeTensorBundleFile(path, &other).status();
  EXPECT_THAT(mismatch.message(), HasSubstr("missing b.weight"));

  // An empty file is an empty bundle.
  back = DecodeTensorBundleFile(dir.WriteFile("empty.bundle", ""));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());

  // The callback's error stops the reading and is returned.
  int calls = 0;
  absl::Status s = ForEachNamedTensorInFile(path, [&](v1::NamedTensor&) {
    ++calls;
    return absl::CancelledError("stop");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 1);
}

TEST(BundleFileTest, RefusesDamagedFiles) {
  fedtune::testing::TempDir dir;
  const std::string bytes = Serialized(Model());
  EXPECT_EQ(DecodeTensorBundleFile(dir.Join("missing.bundle")).status().code(), absl::StatusCode::kNotFound);

  // Truncated anywhere inside: the last message is incomplete.
  for (size_t cut : {bytes.size() - 1, bytes.size() - 20, bytes.size() / 2, size_t{3}}) {
    const std::string path = dir.WriteFile("cut.bundle", bytes.substr(0, cut));
    absl::Status s = DecodeTensorBundleFile(path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << cut << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("cut.bundle")) << cut;
  }
  // Another field, a zero tag.
  absl::Status s = DecodeTensorBundleFile(dir.WriteFile("field2.bundle", std::string("\x12\x01x", 3))).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("field 2"));
  s = DecodeTensorBundleFile(dir.WriteFile("zero.bundle", bytes + std::string(1, '\0'))).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  // A tensor message announcing 2^31 - 1 bytes over a 6-byte header: refused, with no signed overflow in the position
  // arithmetic (a fuzz finding; UBSan builds, FEDTUNE_SANITIZE=address, abort on it).
  s = DecodeTensorBundleFile(dir.WriteFile("huge.bundle", std::string("\x0a\xff\xff\xff\xff\x07\x0a\x01x", 9)))
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("huge.bundle"));

  // A tensor that parses but does not decode: the message names the file and the tensor.
  v1::TensorBundle bundle;
  bundle.ParseFromString(bytes);
  bundle.mutable_tensors(1)->mutable_data()->resize(12);
  s = DecodeTensorBundleFile(dir.WriteFile("bad.bundle", bundle.SerializeAsString())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("bad.bundle"));
  EXPECT_THAT(s.message(), HasSubstr("'a.weight'"));

  // The same tensor twice.
  std::string twice = Serialized(Model());
  twice += twice;
  s = DecodeTensorBundleFile(dir.WriteFile("twice.bundle", twice)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("occurs twice"));
}

TEST(BundleFileTest, StreamingDecodeEqualsWholeDecode) {
  fedtune::testing::TempDir dir;
  const TensorMap m = Model();
  for (Encoding encoding : {Encoding::kDenseFp32, Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK}) {
    EncodeOptions options;
    options.encoding = encoding;
    options.topk_fraction = 0.1;
    const std::string bytes = Serialized(m, options);
    const std::string path = dir.WriteFile("delta.bundle", bytes);
    absl::StatusOr<v1::TensorBundle> parsed = ParseTensorBundle(bytes);
    ASSERT_TRUE(parsed.ok());
    absl::StatusOr<TensorMap> whole = DecodeTensors(*parsed, &m);
    ASSERT_TRUE(whole.ok()) << whole.status();
    TensorMap streamed;
    ASSERT_TRUE(ForEachDecodedTensorInFile(path, &m, [&](const std::string& name, at::Tensor t) {
                  EXPECT_EQ(t.use_count(), 1) << name;  // The decoder keeps nothing of it.
                  streamed.emplace(name, std::move(t));
                  return absl::OkStatus();
                }).ok());
    ASSERT_EQ(streamed.size(), whole->size());
    for (const auto& [name, t] : *whole) {
      EXPECT_EQ(streamed.at(name).scalar_type(), t.scalar_type()) << name;
      EXPECT_TRUE(at::equal(streamed.at(name), t)) << EncodingName(encoding) << " " << name;
    }
  }
}

TEST(BundleFileTest, WritesTensorByTensorTheBytesOfAWholeEncoding) {
  fedtune::testing::TempDir dir;
  const TensorMap m = Model();
  for (Encoding encoding : {Encoding::kDenseFp32, Encoding::kInt8}) {
    EncodeOptions options;
    options.encoding = encoding;
    const std::string path = dir.Join("state.bundle");
    ASSERT_TRUE(WriteTensorBundleFile(path, m, options).ok());
    absl::StatusOr<std::string> written = io::ReadFile(path);
    ASSERT_TRUE(written.ok());
    EXPECT_EQ(*written, Serialized(m, options)) << EncodingName(encoding);
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  }
  // An error leaves the file as it was.
  TensorMap bad = m;
  bad["nan"] = test_tensors::Vec({NAN});
  EXPECT_EQ(WriteTensorBundleFile(dir.Join("state.bundle"), bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*io::ReadFile(dir.Join("state.bundle")), Serialized(m, {Encoding::kInt8}));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("state.bundle.tmp")));
}

TEST(BundleFileTest, StreamingDecodeChecksTheSchemaAndStopsAtTheFirstError) {
  fedtune::testing::TempDir dir;
  const TensorMap m = Model();
  TensorMap fewer = m;
  fewer.erase("bn.running_var");
  const std::string path = dir.WriteFile("fewer.bundle", Serialized(fewer));
  int seen = 0;
  absl::Status s = ForEachDecodedTensorInFile(path, &m, [&](const std::string&, at::Tensor) {
    ++seen;
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("missing bn.running_var"));
  EXPECT_EQ(seen, 4);
  // The callback's error ends the walk and comes back unchanged.
  seen = 0;
  s = ForEachDecodedTensorInFile(dir.WriteFile("all.bundle", Serialized(m)), &m, [&](const std::string&, at::Tensor) {
    return ++seen == 2 ? absl::CancelledError("enough") : absl::OkStatus();
  });
  EXPECT_EQ(s, absl::CancelledError("enough"));
  EXPECT_EQ(seen, 2);
  // A tensor the model lacks is refused before it is decoded.
  TensorMap more = m;
  more["x"] = Randn({3}, 4);
  seen = 0;
  s = ForEachDecodedTensorInFile(dir.WriteFile("more.bundle", Serialized(more)), &m,
                                 [&](const std::string&, at::Tensor) {
                                   ++seen;
                                   return absl::OkStatus();
                                 });
  EXPECT_THAT(s.message(), HasSubstr("'x': not a tensor of the model"));
}

// A partial schema (a FEDBN run's shared tensors): a tensor left out of it is first explained by the caller's hook,
// whose error comes back as it is; names the hook does not explain get the generic refusal.
TEST(BundleFileTest, UnexpectedNamesAreExplainedByTheCallersHook) {
  fedtune::testing::TempDir dir;
  const TensorMap m = Model();
  TensorMap shared = m;
  shared.erase("bn.running_var");
  shared.erase("bn.num_batches_tracked");
  const std::string path = dir.WriteFile("all.bundle", Serialized(m));
  auto explain = [](const std::string& name) {
    return name == "bn.num_batches_tracked" ? absl::InvalidArgumentError("'" + name + "' stays at the site")
                                            : absl::OkStatus();
  };
  auto ignore = [](const std::string&, at::Tensor) { return absl::OkStatus(); };
  // Name order: bn.num_batches_tracked comes first.
  absl::Status s = ForEachDecodedTensorInFile(path, &shared, ignore, explain);
  EXPECT_EQ(s, absl::InvalidArgumentError("'bn.num_batches_tracked' stays at the site"));
  s = ForEachDecodedTensorInFile(dir.WriteFile("var.bundle", Serialized(shared)), &shared, ignore, explain);
  EXPECT_TRUE(s.ok()) << s;
  TensorMap with_var = shared;
  with_var["bn.running_var"] = m.at("bn.running_var");
  s = ForEachDecodedTensorInFile(dir.WriteFile("with_var.bundle", Serialized(with_var)), &shared, ignore, explain);
  EXPECT_THAT(s.message(), HasSubstr("'bn.running_var': not a tensor of the model"));
}

}  // namespace
}  // namespace fedtune::fl
