// Tests of `fedtune privacy epsilon` and `fedtune privacy noise`: exact JSON output, text output, the real binary's
// exit codes on bad flags, and noise solutions that round-trip through epsilon.
#include "common/privacy/privacy_command.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/privacy/rdp_accountant.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::privacy {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

absl::Status RunCommandWith(cli::Command command, const std::vector<std::string>& args) {
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  return command.run(*flags);
}

TEST(PrivacyCommandTest, EpsilonJsonIsExact) {
  std::ostringstream out;
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(out), {"--noise-multiplier", "1.1", "--sample-rate", "0.01",
                                                              "--steps", "10000", "--delta", "1e-5", "--json"})
                  .ok());
  EXPECT_THAT(out.str(), MatchesRegex("\\{\"epsilon\": [0-9.e+-]+, \"best_order\": [0-9.]+\\}\n"));
  nlohmann::json j = nlohmann::json::parse(out.str());
  ASSERT_EQ(j.size(), 2u);
  RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSteps(0.01, 1.1, 10000).ok());
  PrivacySpent spent = *accountant.GetPrivacySpent(1e-5);
  EXPECT_EQ(j["epsilon"].get<double>(), spent.epsilon);  // Round-trips exactly.
  EXPECT_EQ(j["best_order"].get<double>(), spent.best_order);
}

TEST(PrivacyCommandTest, EpsilonText) {
  std::ostringstream out;
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(out),
                             {"--noise-multiplier", "1", "--sample-rate", "1", "--steps", "1", "--delta", "1e-5"})
                  .ok());
  EXPECT_THAT(out.str(), HasSubstr("epsilon = "));
  EXPECT_THAT(out.str(), HasSubstr("best RDP order"));
}

TEST(PrivacyCommandTest, NoiseRoundTripsThroughEpsilon) {
  std::ostringstream noise_out;
  ASSERT_TRUE(RunCommandWith(MakePrivacyNoiseCommand(noise_out), {"--target-epsilon", "2", "--sample-rate", "0.02",
                                                                  "--steps", "3000", "--delta", "1e-5", "--json"})
                  .ok());
  nlohmann::json solved = nlohmann::json::parse(noise_out.str());
  ASSERT_EQ(solved.size(), 3u);
  const double sigma = solved["noise_multiplier"].get<double>();
  EXPECT_LE(solved["epsilon"].get<double>(), 2.0);
  EXPECT_GT(solved["epsilon"].get<double>(), 1.99);  // Smallest sigma to 1e-4: epsilon sits just under the target.

  std::ostringstream eps_out;
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(eps_out),
                             {"--noise-multiplier", nlohmann::json(sigma).dump(), "--sample-rate", "0.02", "--steps",
                              "3000", "--delta", "1e-5", "--json"})
                  .ok());
  nlohmann::json eps = nlohmann::json::parse(eps_out.str());
  EXPECT_EQ(eps["epsilon"].get<double>(), solved["epsilon"].get<double>());
  EXPECT_EQ(eps["best_order"].get<double>(), solved["best_order"].get<double>());
}

TEST(PrivacyCommandTest, BadValuesNameTheFlag) {
  std::ostringstream out;
  absl::Status s = RunCommandWith(MakePrivacyEpsilonCommand(out), {"--noise-multiplier", "1", "--sample-rate", "1.5",
                                                                   "--steps", "1", "--delta", "1e-5"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sample rate"));
  s = RunCommandWith(MakePrivacyEpsilonCommand(out),
                     {"--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "1", "--delta", "2"});
  EXPECT_THAT(s.message(), HasSubstr("--delta"));
  s = RunCommandWith(MakePrivacyNoiseCommand(out),
                     {"--target-epsilon", "0.01", "--sample-rate", "0.1", "--steps", "0", "--delta", "1e-5"});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(out.str().empty());
}

TEST(PrivacyCommandTest, BinaryExitCodes) {
  const std::string bin = testing::BinPath("fedtune");
  std::string out;
  ASSERT_EQ(testing::RunCommand(bin + " privacy epsilon --noise-multiplier 1.1 --sample-rate 0.01 --steps 100 "
                                      "--delta 1e-5 --json",
                                &out),
            0)
      << out;
  EXPECT_EQ(nlohmann::json::parse(out).size(), 2u);
  for (const std::string& bad : {
           std::string(" privacy epsilon --noise-multiplier 1.1 --sample-rate 0.01 --steps 100"),  // No --delta.
           std::string(" privacy epsilon --noise-multiplier x --sample-rate 0.01 --steps 100 --delta 1e-5"),
           std::string(" privacy epsilon --noise-multiplier 0 --sample-rate 0.01 --steps 100 --delta 1e-5"),
           std::string(" privacy epsilon --noise-multiplier 1 --sample-rate 0.01 --steps -3 --delta 1e-5"),
           std::string(" privacy epsilon --noise-multiplier 1 --sample-rate 0.01 --steps 1 --delta 1e-5 --bogus"),
           std::string(" privacy noise --target-epsilon -1 --sample-rate 0.01 --steps 100 --delta 1e-5"),
           std::string(" privacy noise --target-epsilon 1e-3 --sample-rate 0.01 --steps 100 --delta 1e-5"),
       }) {
    EXPECT_EQ(testing::RunCommand(bin + bad, &out), 2) << bad << "\n" << out;
    EXPECT_THAT(out, HasSubstr("error"));
  }
}

}  // namespace
}  // namespace fedtune::privacy
