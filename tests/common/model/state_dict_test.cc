// Tests of common/model/state_dict.h: torchvision parity (through torchvision_reference.py run with Debian's
// python3), the restricted unpickler's refusals, safetensors, and loading rules (fold, head, missing, unexpected).
#include "common/model/state_dict.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/model/model_factory.h"
#include "common/model/torch_archive.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/model/archive_bytes.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::model {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using namespace std::string_literals;

// The Python reference's output, generated once per build tree and script version: ctest runs every test case
// in its own process, and the script takes seconds. Concurrent generators each write a private directory and
// rename it into place; the loser of the race uses the winner's.
class ReferenceFiles {
 public:
  static const ReferenceFiles& Get() {
    static ReferenceFiles* files = new ReferenceFiles();
    return *files;
  }
  std::string Path(const std::string& name) const { return absl::StrCat(dir_, "/", name); }

 private:
  ReferenceFiles() {
    const std::string script = absl::StrCat(FEDTUNE_SOURCE_DIR, "/tests/common/model/torchvision_reference.py");
    auto content = io::ReadFile(script);
    CHECK(content.ok()) << content.status();
    const std::string parent = absl::StrCat(FEDTUNE_BINARY_DIR, "/testdata");
    CHECK(io::MakeDirectories(parent).ok());
    dir_ = absl::StrCat(parent, "/torchvision_reference_", std::hash<std::string>()(*content));
    if (std::filesystem::exists(dir_ + "/done")) return;
    const std::string staging = absl::StrCat(dir_, ".tmp", ::getpid());
    std::filesystem::create_directories(staging);
    std::string output;
    const std::string command = absl::StrCat(FEDTUNE_PYTHON, " ", script, " ", staging);
    int rc = testing::RunCommand(command, &output);
    CHECK_EQ(rc, 0) << command << "\n" << output;
    CHECK(io::WriteFileAtomically(staging + "/done", "").ok());
    std::error_code ec;
    std::filesystem::rename(staging, dir_, ec);
    if (ec) std::filesystem::remove_all(staging, ec);  // Another process won the race.
    CHECK(std::filesystem::exists(dir_ + "/done")) << dir_;
  }
  std::string dir_;
};

StateDict ReadOrDie(const std::string& path) {
  auto sd = ReadStateDictFile(path);
  CHECK(sd.ok()) << sd.status();
  return *sd;
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

struct ImagenetCase {
  const char* arch;
  int64_t features;
};

class ImagenetParityTest : public ::testing::TestWithParam<ImagenetCase> {};

// An RGB, 1000-class torchvision model imported into a 1-channel, 14-output fedtune model: the folded stem on a
// gray image must give exactly the pooled features of the RGB model on the gray image replicated to 3 channels.
TEST_P(ImagenetParityTest, FoldedStemMatchesTorchvisionOnReplicatedGray) {
  const ImagenetCase& c = GetParam();
  const ReferenceFiles& files = ReferenceFiles::Get();
  auto source = ReadTorchStateDict(files.Path(absl::StrCat(c.arch, "_imagenet.pt")));
  ASSERT_TRUE(source.ok()) << source.status();
  StateDict ref = ReadOrDie(files.Path(absl::StrCat(c.arch, "_imagenet_ref.pt")));

  torch::manual_seed(5);
  Classifier model = *CreateModel(*ModelConfigForName(c.arch));
  torch::Tensor fresh_head = model->named_parameters()[model->head_prefix() + "weight"].clone();
  auto report = LoadStateDictIntoModel(*source, *model);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->stem_folded);
  EXPECT_EQ(report->source_stem_channels, 3);
  EXPECT_TRUE(report->head_replaced);
  EXPECT_EQ(report->source_head_shape, (std::vector<int64_t>{1000, c.features}));
  EXPECT_THAT(report->missing_keys, IsEmpty());
  EXPECT_THAT(report->unexpected_keys, IsEmpty());
  EXPECT_EQ(report->loaded + 2, static_cast<int64_t>(source->size()));
  EXPECT_THAT(report->Summary(), HasSubstr("replaced the head"));
  EXPECT_TRUE(torch::equal(model->named_parameters()[model->head_prefix() + "weight"], fresh_head));

  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor pooled = model->Pool(model->Features(ref.at("input")));
  ASSERT_EQ(pooled.sizes(), ref.at("pooled").sizes());
  EXPECT_LT(MaxAbsDiff(pooled, ref.at("pooled")), 1e-4);
  EXPECT_GT(ref.at("pooled").abs().max().item<double>(), 1e-2);  // The comparison is not trivially of zeros.
  EXPECT_EQ(model->forward(ref.at("input")).sizes(), (std::vector<int64_t>{1, 14}));
}

INSTANTIATE_TEST_SUITE_P(Torchvision, ImagenetParityTest,
                         ::testing::Values(ImagenetCase{"densenet121", 1024}, ImagenetCase{"resnext50_32x4d", 2048},
                                           ImagenetCase{"mobilenet_v2", 1280}),
                         [](const auto& info) { return std::string(info.param.arch); });

struct GrayCase {
  const char* file;    // Prefix of the reference files.
  const char* preset;  // fedtune preset, adjusted below.
};

ModelConfig GrayConfig(const GrayCase& c) {
  ModelConfig config = *ModelConfigForName(c.preset);
  if (std::string(c.file) == "resnext_1111") config.resnext.base_planes = 64;  // torchvision's fixed stem width.
  return config;
}

class GrayParityTest : public ::testing::TestWithParam<GrayCase> {};

// 1-channel, 14-output scaled torchvision models load strictly and give the same logits.
TEST_P(GrayParityTest, LogitsMatchTorchvision) {
  const GrayCase& c = GetParam();
  const ReferenceFiles& files = ReferenceFiles::Get();
  StateDict source = ReadOrDie(files.Path(absl::StrCat(c.file, "_gray.pt")));
  StateDict ref = ReadOrDie(files.Path(absl::StrCat(c.file, "_gray_ref.pt")));
  Classifier model = *CreateModel(GrayConfig(c));
  auto report = LoadStateDictIntoModel(source, *model);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->stem_folded);
  EXPECT_FALSE(report->head_replaced);
  EXPECT_THAT(report->unexpected_keys, IsEmpty());
  EXPECT_EQ(report->loaded, static_cast<int64_t>(source.size()));
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model->forward(ref.at("input"));
  EXPECT_LT(MaxAbsDiff(logits, ref.at("logits")), 1e-4);
  // The state dict read back from the model equals the source, buffers included.
  StateDict back = ModuleStateDict(*model);
  ASSERT_EQ(back.size(), source.size());
  for (const auto& [key, tensor] : source) EXPECT_TRUE(torch::equal(back.at(key), tensor)) << key;
}

INSTANTIATE_TEST_SUITE_P(Torchvision, GrayParityTest,
                         ::testing::Values(GrayCase{"densenet_tiny", "densenet_tiny"},
                                           GrayCase{"resnext_1111", "resnext_tiny"},
                                           GrayCase{"mobilenet_v2_tiny", "mobilenet_v2_tiny"}),
                         [](const auto& info) { return std::string(info.param.file); });

TEST(SafetensorsTest, PythonWrittenFilesMatchThePickledStateDict) {
  const ReferenceFiles& files = ReferenceFiles::Get();
  StateDict pickled = ReadOrDie(files.Path("mobilenet_v2_tiny_gray.pt"));
  auto f32 = ReadSafetensors(files.Path("mobilenet_v2_tiny_gray.safetensors"));
  ASSERT_TRUE(f32.ok()) << f32.status();
  ASSERT_EQ(f32->size(), pickled.size());
  for (const auto& [key, t] : pickled) EXPECT_TRUE(torch::equal(f32->at(key), t)) << key;

  StateDict f16 = ReadOrDie(files.Path("mobilenet_v2_tiny_gray_f16.safetensors"));
  StateDict half = ReadOrDie(files.Path("mobilenet_v2_tiny_gray_half.pt"));  // HalfStorage in the pickle.
  for (const auto& [key, t] : pickled) {
    torch::Tensor expected = t.is_floating_point() ? t.to(torch::kHalf) : t;
    EXPECT_TRUE(torch::equal(f16.at(key), expected)) << key;
    EXPECT_TRUE(torch::equal(half.at(key), expected)) << key;
  }
  // Half weights load into a float model with conversion.
  Classifier model = *CreateModel(*ModelConfigForName("mobilenet_v2_tiny"));
  auto report = LoadStateDictIntoModel(half, *model);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(model->named_parameters()["classifier.1.weight"].scalar_type(), torch::kFloat);
}

TEST(SafetensorsTest, WriteReadRoundTripAndMalformedFiles) {
  testing::TempDir dir;
  StateDict tensors = {{"a", torch::arange(6, torch::kFloat).reshape({2, 3})},
                       {"b", torch::tensor({1, -2}, torch::kLong)},
                       {"c", torch::ones({3}, torch::kBFloat16)},
                       {"empty", torch::zeros({0, 4})}};
  const std::string path = dir.Join("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(tensors, path).ok());
  auto back = ReadStateDictFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 4u);
  for (const auto& [key, t] : tensors) EXPECT_TRUE(torch::equal(back->at(key), t)) << key;

  auto parse = [](const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    for (int k = 0; k < 8; ++k) bytes[k] = static_cast<char>((header.size() >> (8 * k)) & 0xff);
    return ParseSafetensors(bytes + header + data, "x.safetensors");
  };
  EXPECT_THAT(parse(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'))
                  .status()
                  .ToString(),
              HasSubstr("OK"));
  EXPECT_THAT(parse(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", std::string(8, '\0'))
                  .status()
                  .message(),
              HasSubstr("outside the data"));
  EXPECT_THAT(parse(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", std::string(8, '\0'))
                  .status()
                  .message(),
              HasSubstr("tensor 'w' spans 8 bytes"));
  EXPECT_THAT(parse(R"({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}})", std::string(8, '\0'))
                  .status()
                  .message(),
              HasSubstr("unsupported dtype C64"));
  EXPECT_THAT(parse("not json", "").status().message(), HasSubstr("not a JSON object"));
  EXPECT_THAT(ParseSafetensors(std::string("\xff\xff\xff\xff\0\0\0\0{}", 10), "big").status().message(),
              HasSubstr("exceeds the file"));
}

// A .safetensors file from a header and data.
std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int k = 0; k < 8; ++k) bytes[k] = static_cast<char>((header.size() >> (8 * k)) & 0xff);
  return bytes + header + data;
}

// Hostile headers: each is refused cleanly, before what it would make the reader allocate.
TEST(SafetensorsTest, HostileHeadersAreRefused) {
  auto message = [](const std::string& header, const std::string& data) {
    return std::string(ParseSafetensors(SafetensorsBytes(header, data), "evil.safetensors").status().message());
  };
  // 1,000 tensors over the same 4 KiB: 4 MB materialized from a 60 KB file (and quadratic in general).
  std::string header = "{";
  for (int i = 0; i < 1000; ++i) {
    absl::StrAppend(&header, i ? "," : "", "\"t", i,
                    "\": {\"dtype\": \"U8\", \"shape\": [4096], \"data_offsets\": [0, 4096]}");
  }
  header += "}";
  EXPECT_THAT(message(header, std::string(4096, '\0')), HasSubstr("overlap"));
  // A header larger than the bound, even when the file holds it.
  const std::string big = "{}" + std::string(kMaxSafetensorsHeaderBytes, ' ');
  EXPECT_THAT(message(big, ""), HasSubstr("kMaxSafetensorsHeaderBytes"));
  // Dimensions that are not integers (a float cast to int64 is undefined behaviour), shapes whose strides overflow,
  // too many dimensions, offsets that are not integers.
  EXPECT_THAT(message(R"({"w": {"dtype": "F32", "shape": [1e300], "data_offsets": [0, 4]}})", std::string(4, '\0')),
              HasSubstr("tensor 'w': shape"));
  EXPECT_THAT(message(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", std::string(4, '\0')),
              HasSubstr("tensor 'w': shape"));
  EXPECT_THAT(message(R"({"w": {"dtype": "F32", "shape": [0, 4611686018427387904, 4611686018427387904],)"
                      R"( "data_offsets": [0, 0]}})",
                      ""),
              HasSubstr("tensor 'w': shape"));
  std::string many_dims = R"({"w": {"dtype": "F32", "shape": [)";
  for (int i = 0; i <= kMaxTensorDims; ++i) many_dims += i ? ",1" : "1";
  many_dims += R"(], "data_offsets": [0, 4]}})";
  EXPECT_THAT(message(many_dims, std::string(4, '\0')), HasSubstr("kMaxTensorDims"));
  EXPECT_THAT(message(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4e0]}})", std::string(4, '\0')),
              HasSubstr("tensor 'w': data_offsets"));
  EXPECT_THAT(message(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", std::string(4, '\0')),
              HasSubstr("tensor 'w': data_offsets"));
  // Deeply nested JSON in the metadata: an error or a value, never a crash.
  const std::string deep = "{\"__metadata__\": " + std::string(1000000, '[') + std::string(1000000, ']') + "}";
  (void)ParseSafetensors(SafetensorsBytes(deep, ""), "deep.safetensors");
  // Adjacent tensors, in any order of the header, are fine.
  auto ok = ParseSafetensors(SafetensorsBytes(R"({"b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},)"
                                              R"( "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},)"
                                              R"( "e": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]}})",
                                              "abcd"),
                             "ok.safetensors");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 3u);
}

using testing::Archive;  // tests/common/model/archive_bytes.h

// A protocol-2 pickle of {"w": tensor(size, stride, offset) on FloatStorage record "0" of `numel` elements}.
std::string TensorDictPickle(int numel, int size, int offset, int stride = 1) {
  std::string p = "\x80\x02}q\x00(X\x01\x00\x00\x00w"s;
  p += "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"s
       "0"
       "X\x03\x00\x00\x00"s
       "cpu";
  p += "K" + std::string(1, static_cast<char>(numel)) + "tQ";
  p += "K" + std::string(1, static_cast<char>(offset));
  p += "K" + std::string(1, static_cast<char>(size)) +
       "\x85"
       "K" +
       std::string(1, static_cast<char>(stride)) +
       "\x85"
       "\x89"
       "ccollections\nOrderedDict\n)Rtq\x01R";
  p += "u.";
  return p;
}

TEST(RestrictedUnpicklerTest, HandCraftedStateDictLoads) {
  std::string storage(16, '\0');
  float values[4] = {1, 2, 3, 4};
  std::memcpy(storage.data(), values, 16);
  auto sd = ParseTorchStateDict(Archive(TensorDictPickle(4, 2, 1), {{"data/0", storage}}));
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_TRUE(torch::equal(sd->at("w"), torch::tensor({2.0f, 3.0f})));
}

TEST(RestrictedUnpicklerTest, RefusesCodeAndMalformedInput) {
  std::string storage(16, '\0');
  auto message = [](const std::string& archive) {
    return std::string(ParseTorchStateDict(archive, "evil.pt").status().message());
  };
  // The classic payload: os.system("...") through GLOBAL + REDUCE.
  EXPECT_THAT(message(Archive("\x80\x02"
                              "cos\nsystem\nX\x04\x00\x00\x00true\x85R."s)),
              HasSubstr("refusing global 'os.system'"));
  EXPECT_THAT(message(Archive("\x80\x04\x8c\x08"
                              "builtins\x8c\x04"
                              "eval\x93.")),
              HasSubstr("refusing global 'builtins.eval'"));
  // INST / OBJ / NEWOBJ build arbitrary objects.
  EXPECT_THAT(message(Archive("(ios\nsystem\n.")), HasSubstr("refusing pickle opcode 0x69"));
  EXPECT_THAT(message(Archive("\x80\x02}q\x00(X\x01\x00\x00\x00w\x81u."s)), HasSubstr("refusing pickle opcode 0x81"));
  // An allowed global may not be called with arbitrary arguments.
  EXPECT_THAT(message(Archive("ccollections\nOrderedDict\nK\x01\x85R.")), HasSubstr("OrderedDict with arguments"));
  EXPECT_THAT(message(Archive("\x80\x02}q\x00(X\x01\x00\x00\x00wK\x01u."s)), HasSubstr("not a tensor"));
  EXPECT_THAT(message(Archive("\x80\x02K\x01.")), HasSubstr("not a state dict"));
  EXPECT_THAT(message(Archive("\x80\x02}q\x00(X\x09\x00\x00\x00w"s)), HasSubstr("truncated"));
  EXPECT_THAT(message(Archive("\x80\x02h\x05.")), HasSubstr("memo index 5 not set"));
  // Storage problems: a missing record, a record too short, a view past its storage.
  EXPECT_THAT(message(Archive(TensorDictPickle(4, 2, 0))), HasSubstr("missing storage record 'data/0'"));
  EXPECT_THAT(message(Archive(TensorDictPickle(4, 2, 0), {{"data/0", std::string(8, '\0')}})),
              HasSubstr("has 8 bytes, expected 16"));
  EXPECT_THAT(message(Archive(TensorDictPickle(4, 3, 2), {{"data/0", storage}})), HasSubstr("exceeds its storage"));
  // An expanded (stride-0) view would make a tiny file allocate without bound.
  EXPECT_THAT(message(Archive(TensorDictPickle(4, 200, 0, 0), {{"data/0", storage}})),
              HasSubstr("more elements than its storage"));
  // Not a zip archive (e.g. the legacy pre-1.6 format) and a broken zip.
  EXPECT_THAT(message("\x80\x02}q\x00."s), HasSubstr("not a zip archive"));
  EXPECT_THAT(message("PK\3\4garbage"), HasSubstr("malformed torch.save archive"));
}

TEST(RestrictedUnpicklerTest, UnreadableFileIsNotFound) {
  EXPECT_EQ(ReadTorchStateDict("/nonexistent/x.pt").status().code(), absl::StatusCode::kNotFound);
}

TEST(LoadStateDictTest, ReportsMissingUnexpectedAndShapeErrors) {
  torch::manual_seed(7);
  Classifier donor = *CreateModel(*ModelConfigForName("densenet_tiny"));
  StateDict full = ModuleStateDict(*donor);

  Classifier model = *CreateModel(*ModelConfigForName("densenet_tiny"));
  StateDict partial = full;
  partial.erase("features.norm5.running_mean");
  partial["extra.weight"] = torch::ones({1});
  auto strict = LoadStateDictIntoModel(partial, *model);
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(strict.status().message(), HasSubstr("features.norm5.running_mean"));
  ImportOptions lenient;
  lenient.allow_missing = true;
  auto report = LoadStateDictIntoModel(partial, *model, lenient);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->missing_keys, std::vector<std::string>{"features.norm5.running_mean"});
  EXPECT_EQ(report->unexpected_keys, std::vector<std::string>{"extra.weight"});

  ModelConfig wider = *ModelConfigForName("densenet_tiny");
  wider.densenet.growth_rate = 12;
  Classifier other = *CreateModel(wider);
  auto mismatch = LoadStateDictIntoModel(full, *other);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.status().message(), HasSubstr("features.denseblock1.denselayer1.conv1.weight"));
  EXPECT_THAT(mismatch.status().message(), HasSubstr("[16, 16, 1, 1]"));

  ImportOptions keep_head;
  keep_head.replace_mismatched_head = false;
  ModelConfig five = *ModelConfigForName("densenet_tiny");
  five.num_outputs = 5;
  Classifier five_model = *CreateModel(five);
  EXPECT_THAT(LoadStateDictIntoModel(full, *five_model, keep_head).status().message(), HasSubstr("classifier.weight"));
  EXPECT_TRUE(LoadStateDictIntoModel(full, *five_model).value().head_replaced);

  // A feature extractor without a head gets a fresh one.
  StateDict headless = full;
  headless.erase("classifier.weight");
  headless.erase("classifier.bias");
  auto fresh = LoadStateDictIntoModel(headless, *model);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(fresh->head_replaced);
  EXPECT_THAT(fresh->missing_keys, IsEmpty());
  EXPECT_FALSE(LoadStateDictIntoModel(headless, *model, keep_head).ok());
}

TEST(LoadStateDictTest, AcceptsDataParallelAndLegacyDenseNetKeys) {
  torch::manual_seed(8);
  Classifier donor = *CreateModel(*ModelConfigForName("densenet_tiny"));
  StateDict renamed;
  for (const auto& [key, t] : ModuleStateDict(*donor)) {
    std::string k = "module." + key;
    for (const char* part : {"norm1", "norm2", "conv1", "conv2"}) {
      const std::string modern = absl::StrCat(".", part, ".");
      const std::string legacy = absl::StrCat(".", std::string(part, 4), ".", std::string(1, part[4]), ".");
      size_t at = k.find(modern);
      if (k.find("denselayer") != std::string::npos && at != std::string::npos) k.replace(at, modern.size(), legacy);
    }
    renamed[k] = t;
  }
  ASSERT_EQ(renamed.count("module.features.denseblock1.denselayer1.norm.1.weight"), 1u);
  Classifier model = *CreateModel(*ModelConfigForName("densenet_tiny"));
  auto report = LoadStateDictIntoModel(renamed, *model);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->stripped_module_prefix);
  EXPECT_TRUE(report->renamed_legacy_densenet_keys);
  for (const auto& [key, t] : ModuleStateDict(*donor)) EXPECT_TRUE(torch::equal(ModuleStateDict(*model).at(key), t));
}

}  // namespace
}  // namespace fedtune::model
