// fedtune-loadgen's options: flag parsing, validation with messages naming the flag, the site numbering and the
// per-round dropout/straggler choice.
#include "site_agent/loadgen/loadgen_options.h"

#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/loadgen/loadgen_command.h"

namespace fedtune::loadgen {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<LoadgenOptions> Parse(std::vector<std::string> args) {
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, LoadgenFlags());
  if (!flags.ok()) return flags.status();
  return OptionsFromFlags(*flags);
}

std::vector<std::string> Required() { return {"--coordinator", "localhost:7443", "--certs", "/tmp/certs"}; }

std::vector<std::string> With(std::vector<std::string> extra) {
  std::vector<std::string> args = Required();
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(LoadgenOptionsTest, DefaultsAndAllFlags) {
  absl::StatusOr<LoadgenOptions> d = Parse(Required());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->coordinator, "localhost:7443");
  EXPECT_EQ(d->certs_dir, "/tmp/certs");
  EXPECT_EQ(d->sites, 1);
  EXPECT_EQ(d->rounds, 0);
  EXPECT_FALSE(d->encoding.has_value());  // "plan"
  EXPECT_EQ(d->variants, 2);
  EXPECT_DOUBLE_EQ(d->delta_value, 0.25);
  EXPECT_DOUBLE_EQ(d->timeout_seconds, 3600);
  EXPECT_EQ(d->task_wait_seconds, 20);

  absl::StatusOr<LoadgenOptions> o =
      Parse(With({"--sites",         "256",      "--rounds",      "3",     "--encoding",          "int8",
                  "--dropout",       "0.25",     "--stragglers",  "0.5",   "--straggler-delay",   "7.5",
                  "--train-seconds", "0",        "--seed",        "99",    "--variants",          "4",
                  "--delta-value",   "-0.5",     "--ca-dir",      "/ca",   "--ca-cert",           "/ca/ca.pem",
                  "--work-dir",      "/w",       "--site-prefix", "h-",    "--heartbeat-seconds", "2",
                  "--task-wait",     "3",        "--rpc-timeout", "9",     "--timeout",           "60",
                  "--ready-file",    "/w/ready", "--server-name", "coord", "--topk-fraction",     "0.1"}));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->sites, 256);
  EXPECT_EQ(o->rounds, 3);
  EXPECT_EQ(o->encoding, fl::Encoding::kInt8);
  EXPECT_DOUBLE_EQ(o->dropout, 0.25);
  EXPECT_DOUBLE_EQ(o->stragglers, 0.5);
  EXPECT_DOUBLE_EQ(o->straggler_delay_seconds, 7.5);
  EXPECT_DOUBLE_EQ(o->train_seconds, 0);
  EXPECT_EQ(o->seed, 99u);
  EXPECT_EQ(o->variants, 4);
  EXPECT_DOUBLE_EQ(o->delta_value, -0.5);
  EXPECT_EQ(o->ca_dir, "/ca");
  EXPECT_EQ(o->ca_cert, "/ca/ca.pem");
  EXPECT_EQ(o->work_dir, "/w");
  EXPECT_EQ(o->site_prefix, "h-");
  EXPECT_EQ(o->heartbeat_seconds, 2);
  EXPECT_EQ(o->task_wait_seconds, 3);
  EXPECT_EQ(o->rpc_timeout_seconds, 9);
  EXPECT_DOUBLE_EQ(o->timeout_seconds, 60);
  EXPECT_EQ(o->ready_file, "/w/ready");
  EXPECT_EQ(o->server_name, "coord");
  EXPECT_DOUBLE_EQ(o->topk_fraction, 0.1);
}

TEST(LoadgenOptionsTest, RefusesBadValuesNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  const std::vector<Case> cases = {
      {{"--certs", "/c"}, "coordinator"},
      {{"--coordinator", "localhost:7443"}, "certs"},
      {With({"--sites", "0"}), "--sites"},
      {With({"--sites", "4097"}), "--sites"},
      {With({"--sites", "many"}), "sites"},
      {With({"--rounds", "-1"}), "--rounds"},
      {With({"--encoding", "fp8"}), "--encoding"},
      {With({"--dropout", "1.5"}), "--dropout"},
      {With({"--dropout", "nan"}), "--dropout"},
      {With({"--stragglers", "-0.1"}), "--stragglers"},
      {With({"--dropout", "0.6", "--stragglers", "0.6"}), "--stragglers"},
      {With({"--straggler-delay", "-1"}), "--straggler-delay"},
      {With({"--train-seconds", "1e9"}), "--train-seconds"},
      {With({"--variants", "0"}), "--variants"},
      {With({"--variants", "17"}), "--variants"},
      {With({"--delta-value", "inf"}), "--delta-value"},
      {With({"--timeout", "0"}), "--timeout"},
      {With({"--heartbeat-seconds", "0"}), "--heartbeat-seconds"},
      {With({"--task-wait", "301"}), "--task-wait"},
      {With({"--rpc-timeout", "0"}), "--rpc-timeout"},
      {With({"--site-prefix", "-bad"}), "--site-prefix"},
      {With({"--site-prefix", "a/b"}), "--site-prefix"},
      {With({"--seed", "-3"}), "--seed"},
      {With({"--topk-fraction", "2"}), "--topk-fraction"},
      {With({"--unknown", "1"}), "unknown"},
      {{"--coordinator", "localhost", "--certs", "/c"}, "--coordinator"},
      {{"--coordinator", "localhost:0", "--certs", "/c"}, "--coordinator"},
      {{"--coordinator", "localhost:99999", "--certs", "/c"}, "--coordinator"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<LoadgenOptions> o = Parse(c.args);
    ASSERT_FALSE(o.ok()) << c.flag;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.flag;
    EXPECT_THAT(o.status().message(), HasSubstr(c.flag));
  }
}

TEST(LoadgenOptionsTest, SiteNumbering) {
  EXPECT_EQ(SiteId("loadgen-", 7), "loadgen-0007");
  EXPECT_EQ(SiteId("h", 1234), "h1234");
  EXPECT_EQ(SiteNumSamples(0), 1);
  EXPECT_EQ(SiteNumSamples(63), 64);
  EXPECT_EQ(SiteVariant(5, 2), 1);
  EXPECT_EQ(SiteVariant(6, 2), 0);
  EXPECT_EQ(SiteVariant(6, 4), 2);
  EXPECT_EQ(SiteVariant(9, 1), 0);
}

TEST(LoadgenOptionsTest, RolesPerRoundAreCountedDeterministicAndVary) {
  LoadgenOptions o;
  o.sites = 64;
  o.dropout = 0.25;
  o.stragglers = 0.125;
  std::set<std::vector<int>> dropped_sets;
  for (int round = 1; round <= 4; ++round) {
    int dropped = 0, late = 0;
    std::vector<int> dropped_sites;
    for (int i = 0; i < o.sites; ++i) {
      const SiteRole role = RoleInRound(o, i, round, 1);
      EXPECT_EQ(role, RoleInRound(o, i, round, 1));  // Deterministic.
      if (role == SiteRole::kDropOut) {
        ++dropped;
        dropped_sites.push_back(i);
      }
      late += role == SiteRole::kStraggle ? 1 : 0;
    }
    EXPECT_EQ(dropped, 16) << "round " << round;
    EXPECT_EQ(late, 8) << "round " << round;
    dropped_sets.insert(dropped_sites);
  }
  EXPECT_GT(dropped_sets.size(), 1u);  // Not the same sites every round.
  o.dropout = 0;
  o.stragglers = 0;
  for (int i = 0; i < o.sites; ++i) EXPECT_EQ(RoleInRound(o, i, 1, 1), SiteRole::kUpload);
  o.dropout = 1;
  for (int i = 0; i < o.sites; ++i) EXPECT_EQ(RoleInRound(o, i, 2, 1), SiteRole::kDropOut);
}

TEST(LoadgenCommandTest, HelpAndBadFlags) {
  std::ostringstream out, err;
  EXPECT_EQ(RunLoadgenCommand({"--help"}, out, err), 0);
  EXPECT_THAT(out.str(), HasSubstr("--dropout"));
  EXPECT_THAT(out.str(), HasSubstr("--ca-dir"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunLoadgenCommand({"--coordinator", "x:1", "--certs", "/c", "--sites", "-4"}, out2, err2), 2);
  EXPECT_THAT(err2.str(), HasSubstr("fedtune-loadgen: error: --sites"));
}

TEST(LoadgenCommandTest, MissingCertificatesWithoutCaDirAreNamed) {
  const std::string dir = ::testing::TempDir() + "/loadgen_no_certs";
  std::ostringstream out, err;
  const int rc = RunLoadgenCommand(
      {"--coordinator", "localhost:7443", "--certs", dir, "--ca-cert", dir + "/missing-ca.pem"}, out, err);
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(err.str(), HasSubstr("missing-ca.pem"));
}

}  // namespace
}  // namespace fedtune::loadgen
