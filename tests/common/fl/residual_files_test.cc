#include "common/fl/residual_files.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <string>

#include "common/io/file_util.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::fl {
namespace {

namespace fs = std::filesystem;
using test_tensors::Randn;
using test_tensors::Vec;

// The residual files of round `round`, attempt `attempt`, of one run in `dir` (the agent's layout).
ResidualPaths PathsOf(const fedtune::testing::TempDir& dir, int round, int attempt) {
  ResidualPaths paths;
  paths.current = dir.Join("residual.bin");
  const std::string round_dir = dir.Join("round-" + std::to_string(round) + "-" + std::to_string(attempt));
  fs::create_directories(round_dir);
  paths.before = round_dir + "/residual.before.bin";
  paths.after = round_dir + "/residual.after.bin";
  for (int a = attempt - 1; a >= 0; --a) {
    paths.earlier_attempts.push_back(
        dir.Join("round-" + std::to_string(round) + "-" + std::to_string(a) + "/residual.before.bin"));
  }
  return paths;
}

EncodeOptions Int8() { return {Encoding::kInt8, 0.01}; }

TEST(ResidualFilesTest, DenseFp32TouchesNoFile) {
  fedtune::testing::TempDir dir;
  const ResidualPaths paths = PathsOf(dir, 1, 1);
  auto encoded = EncodeWithResidual({{"w", Vec({1, 2, 3})}}, EncodeOptions(), paths);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(encoded->num_tensors, 1);
  ASSERT_TRUE(CommitResidual(Encoding::kDenseFp32, paths).ok());
  EXPECT_FALSE(fs::exists(paths.before));
  EXPECT_FALSE(fs::exists(paths.after));
  EXPECT_FALSE(fs::exists(paths.current));
}

TEST(ResidualFilesTest, EncodingAgainAfterACrashGivesTheSamePayload) {
  fedtune::testing::TempDir dir;
  const TensorMap delta = {{"w", Randn({64}, 1)}};
  const ResidualPaths first = PathsOf(dir, 1, 1);
  auto a = EncodeWithResidual(delta, Int8(), first);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*io::ReadFile(first.before), "");  // Nothing to carry in the first round.
  auto residual = ReadResidualFile(first.after);
  ASSERT_TRUE(residual.ok()) << residual.status();
  ASSERT_EQ(residual->count("w"), 1u);
  EXPECT_GT(residual->at("w").abs().max().item<float>(), 0);  // int8 lost something, kept for the next round.
  // A crash before the payload was recorded: encoding again starts from the pinned residual.
  auto again = EncodeWithResidual(delta, Int8(), first);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->bundle.SerializeAsString(), a->bundle.SerializeAsString());
  EXPECT_FALSE(fs::exists(first.current));  // Not committed yet.

  ASSERT_TRUE(CommitResidual(Encoding::kInt8, first).ok());
  ASSERT_TRUE(CommitResidual(Encoding::kInt8, first).ok());  // Idempotent.
  EXPECT_EQ(*io::ReadFile(first.current), *io::ReadFile(first.after));
  // The next round starts from the committed residual.
  const ResidualPaths second = PathsOf(dir, 2, 1);
  ASSERT_TRUE(EncodeWithResidual(delta, Int8(), second).ok());
  EXPECT_EQ(*io::ReadFile(second.before), *io::ReadFile(first.after));
}

TEST(ResidualFilesTest, ARetriedAttemptStartsFromItsRoundsResidual) {
  fedtune::testing::TempDir dir;
  const TensorMap delta = {{"w", Randn({64}, 2)}};
  const ResidualPaths attempt0 = PathsOf(dir, 3, 0);
  ASSERT_TRUE(WriteResidualFile(attempt0.current, {{"w", Randn({64}, 3)}}).ok());
  ASSERT_TRUE(EncodeWithResidual(delta, Int8(), attempt0).ok());
  ASSERT_TRUE(CommitResidual(Encoding::kInt8, attempt0).ok());  // The failed attempt moved the run's residual on.
  const ResidualPaths attempt1 = PathsOf(dir, 3, 1);
  ASSERT_TRUE(EncodeWithResidual(delta, Int8(), attempt1).ok());
  EXPECT_EQ(*io::ReadFile(attempt1.before), *io::ReadFile(attempt0.before));
  EXPECT_NE(*io::ReadFile(attempt1.before), *io::ReadFile(attempt1.current));
}

TEST(ResidualFilesTest, AResidualOfTheWrongShapeOrBytesIsAnError) {
  fedtune::testing::TempDir dir;
  const ResidualPaths paths = PathsOf(dir, 1, 1);
  ASSERT_TRUE(WriteResidualFile(paths.current, {{"w", Vec({1, 2})}}).ok());
  EXPECT_EQ(EncodeWithResidual({{"w", Vec({1, 2, 3})}}, Int8(), paths).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(paths.after));
  const std::string garbage = dir.WriteFile("garbage.bin", "not a bundle");
  const absl::Status status = ReadResidualFile(garbage).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("garbage.bin"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace fedtune::fl
