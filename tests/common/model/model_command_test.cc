// Tests of common/model/model_command.h: `model import` and `model info`.
#include "common/model/model_command.h"

#include <torch/torch.h>

#include <sstream>

#include "common/io/file_util.h"
#include "common/model/checkpoint.h"
#include "common/model/model_factory.h"
#include "common/model/state_dict.h"
#include "common/model/torch_archive.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::model {
namespace {

using ::testing::HasSubstr;

absl::Status RunCommandWith(const cli::Command& command, const std::vector<std::string>& args) {
  auto flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  return command.run(*flags);
}

// An RGB, 1000-output tiny MobileNetV2 state dict written like torch.save(model.state_dict()).
std::string WriteRgbStateDict(const testing::TempDir& dir, StateDict* weights) {
  ModelConfig rgb = *ModelConfigForName("mobilenet_v2_tiny");
  rgb.in_channels = 3;
  rgb.num_outputs = 1000;
  torch::manual_seed(31);
  *weights = ModuleStateDict(**CreateModel(rgb));
  PickleValue dict;
  dict.kind = PickleValue::Kind::kDict;
  for (const auto& [key, t] : *weights) dict.AddEntry(key, PickleValue::Tensor(t));
  const std::string path = dir.Join("rgb.pt");
  CHECK(io::WriteFileAtomically(path, *WriteTorchArchive(dict)).ok());
  return path;
}

TEST(ModelCommandTest, ImportThenInfo) {
  testing::TempDir dir;
  StateDict source;
  const std::string pt = WriteRgbStateDict(dir, &source);
  std::ostringstream out;
  const std::string ckpt = dir.Join("m.ckpt");
  absl::Status status = RunCommandWith(MakeModelImportCommand(out), {"--state-dict", pt, "--arch", "mobilenet_v2_tiny",
                                                                     "--out", ckpt, "--image-size", "64"});
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_THAT(out.str(), HasSubstr("folded the 3-channel stem"));
  EXPECT_THAT(out.str(), HasSubstr("replaced the head (source weight [1000, 1280])"));

  auto checkpoint = LoadCheckpoint(ckpt);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_EQ(checkpoint->members.size(), 1u);
  EXPECT_EQ(checkpoint->metadata.image_size, 64);
  EXPECT_THAT(checkpoint->metadata.provenance.source, HasSubstr("rgb.pt"));
  const StateDict& w = checkpoint->members[0].weights;
  EXPECT_TRUE(torch::allclose(w.at("features.0.0.weight"), source.at("features.0.0.weight").sum(1, true)));
  EXPECT_TRUE(torch::equal(w.at("features.18.1.running_var"), source.at("features.18.1.running_var")));
  EXPECT_EQ(w.at("classifier.1.weight").size(0), 14);
  EXPECT_THAT(out.str(), HasSubstr(checkpoint->weights_sha256));

  std::ostringstream info;
  ASSERT_TRUE(RunCommandWith(MakeModelInfoCommand(info), {ckpt}).ok());
  EXPECT_THAT(info.str(), HasSubstr("\"arch\":\"mobilenet_v2\""));
  EXPECT_THAT(info.str(), HasSubstr("Pleural Effusion"));
  EXPECT_THAT(info.str(), HasSubstr(checkpoint->weights_sha256));
}

TEST(ModelCommandTest, BadInputIsReported) {
  testing::TempDir dir;
  StateDict source;
  const std::string pt = WriteRgbStateDict(dir, &source);
  std::ostringstream out;
  absl::Status bad_arch =
      RunCommandWith(MakeModelImportCommand(out), {"--state-dict", pt, "--arch", "vgg16", "--out", dir.Join("m.ckpt")});
  EXPECT_EQ(bad_arch.code(), absl::StatusCode::kInvalidArgument);
  absl::Status wrong_arch = RunCommandWith(
      MakeModelImportCommand(out), {"--state-dict", pt, "--arch", "densenet_tiny", "--out", dir.Join("m.ckpt")});
  EXPECT_EQ(wrong_arch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_arch.message(), HasSubstr("rgb.pt"));
  EXPECT_EQ(RunCommandWith(MakeModelInfoCommand(out), {dir.Join("absent.ckpt")}).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedtune::model
