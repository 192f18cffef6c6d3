// Tests of common/model/checkpoint.h (and the torch_archive.h writer): round trip, digest verification, atomic
// writes, and loading by Python's torch.load (checkpoint_reader.py, run with Debian's python3).
#include "common/model/checkpoint.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "common/model/torch_archive.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::model {
namespace {

using ::testing::HasSubstr;

Classifier Tiny(const std::string& name) { return *CreateModel(*ModelConfigForName(name)); }

// Two members (DenseNet, MobileNetV2) and a DuoNet, with BatchNorm statistics moved off their defaults.
Ensemble MakeEnsemble() {
  torch::manual_seed(11);
  Ensemble e;
  e.solo = SoloNet(std::vector<Classifier>{Tiny("densenet_tiny"), Tiny("mobilenet_v2_tiny")});
  e.duo = DuoNet(Tiny("mobilenet_v2_tiny"), Tiny("mobilenet_v2_tiny"), 14, 0.8);
  torch::NoGradGuard no_grad;
  for (auto& b : e.solo->named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.1, 0.1);
  }
  return e;
}

CheckpointMetadata Metadata() {
  CheckpointMetadata m;
  m.image_size = 64;
  m.mean = {0.5};
  m.std = {0.25};
  m.provenance.parent_digest = std::string(64, 'a');
  m.provenance.source = "finetune site-a";
  m.provenance.data_summary = "train 120 images, 40 patients";
  m.provenance.epochs = 3;
  m.provenance.created_at = "2026-11-25T18:00:00Z";
  return m;
}

TEST(CheckpointTest, RoundTripKeepsWeightsMetadataAndPredictions) {
  testing::TempDir dir;
  Ensemble original = MakeEnsemble();
  Checkpoint checkpoint = CheckpointFromEnsemble(original, Metadata());
  const std::string path = dir.Join("m.ckpt");
  auto digest = SaveCheckpoint(&checkpoint, path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(digest->size(), 64u);
  EXPECT_EQ(*digest, WeightsDigest(checkpoint));

  auto loaded = LoadCheckpoint(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->weights_sha256, *digest);
  EXPECT_EQ(loaded->metadata.labels.size(), 14u);
  EXPECT_EQ(loaded->metadata.labels[2], "Cardiomegaly");
  EXPECT_EQ(loaded->metadata.image_size, 64);
  EXPECT_EQ(loaded->metadata.mean, std::vector<double>{0.5});
  EXPECT_EQ(loaded->metadata.std, std::vector<double>{0.25});
  EXPECT_EQ(loaded->metadata.provenance.parent_digest, std::string(64, 'a'));
  EXPECT_EQ(loaded->metadata.provenance.source, "finetune site-a");
  EXPECT_EQ(loaded->metadata.provenance.data_summary, "train 120 images, 40 patients");
  EXPECT_EQ(loaded->metadata.provenance.epochs, 3);
  EXPECT_EQ(loaded->metadata.provenance.created_at, "2026-11-25T18:00:00Z");
  ASSERT_EQ(loaded->members.size(), 2u);
  EXPECT_EQ(ModelConfigToJson(loaded->members[0].config), ModelConfigToJson(*ModelConfigForName("densenet_tiny")));
  ASSERT_TRUE(loaded->duo.has_value());

  auto rebuilt = EnsembleFromCheckpoint(*loaded);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  torch::NoGradGuard no_grad;
  original.solo->eval();
  rebuilt->solo->eval();
  original.duo->eval();
  rebuilt->duo->eval();
  torch::Tensor x = torch::rand({2, 1, 32, 32});
  EXPECT_TRUE(torch::equal(original.solo->forward(x), rebuilt->solo->forward(x)));
  EXPECT_TRUE(torch::equal(original.duo->forward(x, x.flip(3)), rebuilt->duo->forward(x, x.flip(3))));

  // Same weights, same digest; the file is replaced atomically on a second save.
  Checkpoint again = CheckpointFromEnsemble(*rebuilt, Metadata());
  EXPECT_EQ(*SaveCheckpoint(&again, path), *digest);
  EXPECT_TRUE(LoadCheckpoint(path).ok());
}

TEST(CheckpointTest, PythonTorchLoadReadsMembersWithOneCall) {
  testing::TempDir dir;
  Ensemble e = MakeEnsemble();
  Checkpoint checkpoint = CheckpointFromEnsemble(e, Metadata());
  const std::string path = dir.Join("m.ckpt");
  ASSERT_TRUE(SaveCheckpoint(&checkpoint, path).ok());
  // Reference logits of each member, written with the same archive writer.
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::rand({2, 1, 48, 48});
  PickleValue ref;
  ref.kind = PickleValue::Kind::kDict;
  ref.AddEntry("input", PickleValue::Tensor(x));
  for (size_t i = 0; i < e.solo->members().size(); ++i) {
    e.solo->members()[i]->eval();
    ref.AddEntry(absl::StrCat("logits", i), PickleValue::Tensor(e.solo->members()[i]->forward(x)));
  }
  ASSERT_TRUE(io::WriteFileAtomically(dir.Join("ref.pt"), *WriteTorchArchive(ref)).ok());
  std::string output;
  const std::string command = absl::StrCat(FEDTUNE_PYTHON, " ", FEDTUNE_SOURCE_DIR,
                                           "/tests/common/model/checkpoint_reader.py ", path, " ", dir.Join("ref.pt"));
  EXPECT_EQ(testing::RunCommand(command, &output), 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat("OK 2 members, labels 14, digest ", checkpoint.weights_sha256)));
}

TEST(CheckpointTest, TamperedOrDamagedFilesAreDataLoss) {
  testing::TempDir dir;
  Checkpoint checkpoint = CheckpointFromEnsemble(MakeEnsemble(), Metadata());
  const std::string path = dir.Join("m.ckpt");
  ASSERT_TRUE(SaveCheckpoint(&checkpoint, path).ok());
  std::string bytes = *io::ReadFile(path);

  // Change one weight but keep a well-formed archive and the stored digest.
  auto root = ReadTorchArchive(bytes, path);
  ASSERT_TRUE(root.ok()) << root.status();
  PickleValue* members = const_cast<PickleValue*>((*root)->Find("members"));
  ASSERT_NE(members, nullptr);
  members->items[1]->entries[0].second->tensor.view(-1)[0] += 1e-3;
  const std::string tampered = dir.Join("tampered.ckpt");
  ASSERT_TRUE(io::WriteFileAtomically(tampered, *WriteTorchArchive(**root)).ok());
  auto status = LoadCheckpoint(tampered).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("digest mismatch"));
  EXPECT_THAT(status.message(), HasSubstr(checkpoint.weights_sha256));

  const std::string truncated = dir.WriteFile("truncated.ckpt", bytes.substr(0, bytes.size() / 2));
  EXPECT_EQ(LoadCheckpoint(truncated).status().code(), absl::StatusCode::kDataLoss);
}

TEST(CheckpointTest, RejectsOtherFilesAndBadInput) {
  testing::TempDir dir;
  // A plain state dict (what torch.save(model.state_dict()) gives) is not a checkpoint.
  PickleValue sd;
  sd.kind = PickleValue::Kind::kDict;
  sd.AddEntry("w", PickleValue::Tensor(torch::ones({2})));
  const std::string plain = dir.Join("plain.pt");
  ASSERT_TRUE(io::WriteFileAtomically(plain, *WriteTorchArchive(sd)).ok());
  auto status = LoadCheckpoint(plain).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("not a fedtune checkpoint"));
  EXPECT_EQ(LoadCheckpoint(dir.WriteFile("x.ckpt", "hello")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadCheckpoint(dir.Join("absent.ckpt")).status().code(), absl::StatusCode::kNotFound);

  // A hostile checkpoint (as a coordinator could send): a pickle whose shared lists expand to 2^65 values.
  std::string bomb("\x80\x02(]q\x00", 6);
  for (int i = 0; i < 64; ++i) bomb += std::string("](h\x00h\x00", 6) + std::string("eq\x00", 3);
  bomb += "t.";
  std::string archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&archive](const void* data, size_t n) {
      archive.append(static_cast<const char*>(data), n);
      return n;
    });
    writer.writeRecord("data.pkl", bomb.data(), bomb.size());
    writer.writeEndOfFile();
  }
  status = LoadCheckpoint(dir.WriteFile("bomb.ckpt", archive)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("bomb.ckpt"));
  EXPECT_THAT(status.message(), HasSubstr("kMaxPickleExpandedValues"));

  // Metadata integers that are floats out of any int's range are refused, not cast (undefined behaviour).
  for (const char* image_size : {"1e300", "-1e300", "64.5", "4294967360"}) {
    PickleValue root;
    root.kind = PickleValue::Kind::kDict;
    root.AddEntry("format", PickleValue::String("fedtune.checkpoint"));
    root.AddEntry("version", PickleValue::Int(1));
    root.AddEntry("metadata",
                  PickleValue::String(absl::StrCat(R"({"labels": [], "image_size": )", image_size,
                                                   R"(, "normalization": {"mean": [0.5], "std": [0.2]}})")));
    status = LoadCheckpoint(dir.WriteFile("meta.ckpt", *WriteTorchArchive(root))).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << image_size << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("image_size")) << image_size;
  }

  Checkpoint empty;
  EXPECT_EQ(SaveCheckpoint(&empty, dir.Join("e.ckpt")).status().code(), absl::StatusCode::kInvalidArgument);
  Checkpoint one = CheckpointFromEnsemble(MakeEnsemble(), Metadata());
  EXPECT_EQ(SaveCheckpoint(&one, dir.Join("no/such/dir/m.ckpt")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedtune::model
