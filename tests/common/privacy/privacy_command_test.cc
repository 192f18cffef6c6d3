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

// --phases composes phases at one noise multiplier (RDP adds): the epsilon equals the accountant fed both phases, one
// phase split in two gives the single phase's epsilon, and the noise solved for two phases round-trips. Either
// --sample-rate/--steps or --phases, not both; a malformed phase is named.
TEST(PrivacyCommandTest, PhasesCompose) {
  std::ostringstream out;
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(out),
                             {"--noise-multiplier", "1.2", "--phases", "0.178:12,0.62:4", "--delta", "1e-5", "--json"})
                  .ok());
  RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSteps(0.178, 1.2, 12).ok());
  ASSERT_TRUE(accountant.AddSteps(0.62, 1.2, 4).ok());
  EXPECT_EQ(nlohmann::json::parse(out.str())["epsilon"].get<double>(), accountant.GetPrivacySpent(1e-5)->epsilon);

  std::ostringstream split, whole;
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(split), {"--noise-multiplier", "1.1", "--phases",
                                                                "0.01:4000,0.01:6000", "--delta", "1e-5", "--json"})
                  .ok());
  ASSERT_TRUE(RunCommandWith(MakePrivacyEpsilonCommand(whole), {"--noise-multiplier", "1.1", "--sample-rate", "0.01",
                                                                "--steps", "10000", "--delta", "1e-5", "--json"})
                  .ok());
  EXPECT_NEAR(nlohmann::json::parse(split.str())["epsilon"].get<double>(),
              nlohmann::json::parse(whole.str())["epsilon"].get<double>(), 1e-9);

  std::ostringstream noise;
  ASSERT_TRUE(RunCommandWith(MakePrivacyNoiseCommand(noise),
                             {"--target-epsilon", "8", "--phases", "0.178:12,0.62:4", "--delta", "1e-5", "--json"})
                  .ok());
  const nlohmann::json solved = nlohmann::json::parse(noise.str());
  RdpAccountant at_sigma;
  const double sigma = solved["noise_multiplier"].get<double>();
  ASSERT_TRUE(at_sigma.AddSteps(0.178, sigma, 12).ok());
  ASSERT_TRUE(at_sigma.AddSteps(0.62, sigma, 4).ok());
  EXPECT_LE(at_sigma.GetPrivacySpent(1e-5)->epsilon, 8.0);
  EXPECT_GT(at_sigma.GetPrivacySpent(1e-5)->epsilon, 7.99);

  std::ostringstream ignored;
  absl::Status both = RunCommandWith(MakePrivacyEpsilonCommand(ignored), {"--noise-multiplier", "1", "--phases",
                                                                          "0.1:5", "--steps", "3", "--delta", "1e-5"});
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  absl::Status bad = RunCommandWith(MakePrivacyNoiseCommand(ignored),
                                    {"--target-epsilon", "8", "--phases", "0.1:5,0.2", "--delta", "1e-5"});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("'0.2'"));
  absl::Status range = RunCommandWith(MakePrivacyNoiseCommand(ignored),
                                      {"--target-epsilon", "8", "--phases", "0.1:5,1.5:2", "--delta", "1e-5"});
  EXPECT_THAT(std::string(range.message()), HasSubstr("phase 2"));
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
