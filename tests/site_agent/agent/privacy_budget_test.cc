// The site's privacy budget (site_agent/agent/privacy_budget.h) over a real site.db: its epsilon is the RDP
// accountant's over the same phases, rounds over budget and non-private rounds are declined, records are idempotent
// and survive a reopen, a corrupt ledger row is DataLoss naming it, and the local report gets the privacy line.
#include "site_agent/agent/privacy_budget.h"

#include <cmath>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/match.h"
#include "common/io/file_util.h"
#include "common/privacy/dp_plan.h"
#include "common/privacy/rdp_accountant.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/agent/agent_database.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using ::testing::HasSubstr;

constexpr double kDelta = 1e-5;
constexpr int64_t kImages = 200;

v1::SiteAgentConfig Config(double max_epsilon) {
  v1::SiteAgentConfig config;
  config.set_max_epsilon(max_epsilon);
  config.set_delta(kDelta);
  config.mutable_finetune()->set_batch_size(20);
  return config;
}

v1::Task TrainTask(const std::string& run, int round, const std::string& dp, double sigma, int epochs = 2) {
  v1::Task task;
  task.set_kind(v1::Task::TRAIN);
  task.set_run_id(run);
  task.set_round(round);
  task.set_attempt(1);
  task.mutable_plan()->set_local_epochs(epochs);
  task.mutable_plan()->set_batch_size(16);
  task.mutable_plan()->set_dp(dp);
  task.mutable_plan()->set_dp_noise_multiplier(sigma);
  task.mutable_plan()->set_dp_clip_norm(1.0);
  return task;
}

double Epsilon(privacy::RdpAccountant& accountant) {
  auto spent = accountant.GetPrivacySpent(kDelta);
  EXPECT_TRUE(spent.ok()) << spent.status();
  return spent.ok() ? spent->epsilon : -1;
}

class PrivacyBudgetTest : public ::testing::Test {
 protected:
  void Open(double max_epsilon) {
    budget_.reset();
    db_.reset();
    auto db = AgentDatabase::Open(tmp_.Join("site.db"));
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    budget_ = std::make_unique<PrivacyBudget>(db_.get(), Config(max_epsilon));
  }

  fedtune::testing::TempDir tmp_;
  std::unique_ptr<AgentDatabase> db_;
  std::unique_ptr<PrivacyBudget> budget_;
};

TEST_F(PrivacyBudgetTest, AccountEqualsTheAccountantOverTheSamePhases) {
  Open(0);
  auto empty = budget_->Account();
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->epsilon(), 0);
  EXPECT_FALSE(empty->non_private_training());

  // Round 1: DP-SGD, three networks (a SoloNet ensemble), 2 epochs at batch 16 of 200 images.
  const v1::Task r1 = TrainTask("run-1", 1, "dp-sgd", 1.1);
  ASSERT_TRUE(budget_->RecordRound(r1, kImages, 3).ok());
  // Round 2: DP-FedAvg (one Gaussian mechanism, q = 1).
  const v1::Task r2 = TrainTask("run-1", 2, "dp-fedavg", 2.5);
  ASSERT_TRUE(budget_->RecordRound(r2, kImages, 3).ok());
  // Another run: DP-SGD, one network, early-stopped after 7 steps.
  const v1::Task r3 = TrainTask("run-2", 1, "dp-sgd", 0.9, 5);
  ASSERT_TRUE(budget_->RecordRound(r3, kImages, 1, 7).ok());

  auto plan = privacy::PlanDpSgd(kImages, 16, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_DOUBLE_EQ(plan->sample_rate, 0.08);
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSteps(plan->sample_rate, 1.1, 3 * plan->max_steps).ok());
  ASSERT_TRUE(accountant.AddSteps(1.0, 2.5, 1).ok());
  ASSERT_TRUE(accountant.AddSteps(plan->sample_rate, 0.9, 7).ok());
  const double expected = Epsilon(accountant);

  auto account = budget_->Account();
  ASSERT_TRUE(account.ok()) << account.status();
  EXPECT_NEAR(account->epsilon(), expected, 1e-9 * expected);
  EXPECT_GT(account->epsilon(), 0.5);  // A real spend, not a default.
  EXPECT_DOUBLE_EQ(account->delta(), kDelta);
  EXPECT_EQ(account->max_epsilon(), 0);
  EXPECT_EQ(account->private_steps(), 3 * plan->max_steps + 1 + 7);
  EXPECT_FALSE(account->non_private_training());
  EXPECT_DOUBLE_EQ(account->round_epsilon(), account->epsilon());

  // Each phase alone spends less than all of them: they compose.
  privacy::RdpAccountant first;
  ASSERT_TRUE(first.AddSteps(plan->sample_rate, 1.1, 3 * plan->max_steps).ok());
  EXPECT_LT(Epsilon(first), expected);
}

TEST_F(PrivacyBudgetTest, DeclinesTheRoundThatWouldExceedTheBudget) {
  // The budget: a little above what one round spends, below two rounds.
  const v1::Task r1 = TrainTask("run-1", 1, "dp-sgd", 1.0);
  const v1::Task r2 = TrainTask("run-1", 2, "dp-sgd", 1.0);
  auto plan = privacy::PlanDpSgd(kImages, 16, 2);
  ASSERT_TRUE(plan.ok());
  privacy::RdpAccountant one;
  ASSERT_TRUE(one.AddSteps(plan->sample_rate, 1.0, plan->max_steps).ok());
  const double one_round = Epsilon(one);
  privacy::RdpAccountant two;
  ASSERT_TRUE(two.AddSteps(plan->sample_rate, 1.0, 2 * plan->max_steps).ok());
  const double two_rounds = Epsilon(two);
  ASSERT_LT(one_round * 1.05, two_rounds);
  const double budget = (one_round + two_rounds) / 2;
  Open(budget);

  auto first = budget_->CheckRound(r1, kImages, 1);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->decline) << first->reason;
  EXPECT_EQ(first->epsilon_before, 0);
  EXPECT_NEAR(first->epsilon_after, one_round, 1e-9 * one_round);
  // Checking records nothing.
  EXPECT_EQ(budget_->Account()->epsilon(), 0);
  ASSERT_TRUE(budget_->RecordRound(r1, kImages, 1).ok());

  auto second = budget_->CheckRound(r2, kImages, 1);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->decline);
  EXPECT_NEAR(second->epsilon_before, one_round, 1e-9 * one_round);
  EXPECT_NEAR(second->epsilon_after, two_rounds, 1e-9 * two_rounds);
  EXPECT_THAT(second->reason, HasSubstr("max_epsilon"));
  EXPECT_THAT(second->reason, HasSubstr("delta 1e-05"));
  EXPECT_THAT(second->reason, HasSubstr("run-1 round 2"));
  EXPECT_THAT(second->reason, HasSubstr(EpsilonText(two_rounds)));
  EXPECT_NEAR(second->account.epsilon(), one_round, 1e-9 * one_round);
  EXPECT_NEAR(second->account.round_epsilon(), two_rounds, 1e-9 * two_rounds);
  EXPECT_DOUBLE_EQ(second->account.max_epsilon(), budget);

  // Three networks make even the first round too expensive when three times its steps exceed the budget.
  auto wide = budget_->CheckRound(TrainTask("run-2", 1, "dp-sgd", 1.0), kImages, 3);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_TRUE(wide->decline);

  // The attempt already recorded (a restarted agent) is not declined when its record covers the planned phase,
  // whatever the budget ...
  Open(one_round / 10);
  auto again = budget_->CheckRound(r1, kImages, 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->decline);
  EXPECT_TRUE(again->already_recorded);
  // ... but a planned phase that spends more than the record (three networks instead of one) is checked as new.
  auto more = budget_->CheckRound(r1, kImages, 3);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_FALSE(more->already_recorded);
  EXPECT_TRUE(more->decline);

  // No budget (max_epsilon 0): never declined; epsilon is still accounted.
  Open(0);
  auto unbounded = budget_->CheckRound(r2, kImages, 3);
  ASSERT_TRUE(unbounded.ok());
  EXPECT_FALSE(unbounded->decline);
  EXPECT_GT(unbounded->epsilon_after, two_rounds);
}

TEST_F(PrivacyBudgetTest, NonPrivateRoundsAreInfiniteAndDeclinedUnderABudget) {
  Open(10);
  for (const char* dp : {"none", ""}) {
    auto decision = budget_->CheckRound(TrainTask("run-1", 1, dp, 0), kImages, 1);
    ASSERT_TRUE(decision.ok()) << decision.status();
    EXPECT_TRUE(decision->decline) << dp;
    EXPECT_TRUE(std::isinf(decision->epsilon_after));
    EXPECT_EQ(decision->epsilon_before, 0);
    EXPECT_THAT(decision->reason, HasSubstr("max_epsilon 10"));
    EXPECT_THAT(decision->reason, HasSubstr("unbounded"));
  }
  Open(0);
  const v1::Task plain = TrainTask("run-1", 1, "none", 0);
  auto decision = budget_->CheckRound(plain, kImages, 1);
  ASSERT_TRUE(decision.ok());
  EXPECT_FALSE(decision->decline);
  ASSERT_TRUE(budget_->RecordRound(plain, kImages, 1).ok());
  ASSERT_TRUE(budget_->RecordRound(TrainTask("run-1", 2, "dp-fedavg", 1.0), kImages, 1).ok());
  auto account = budget_->Account();
  ASSERT_TRUE(account.ok()) << account.status();
  EXPECT_TRUE(std::isinf(account->epsilon()));
  EXPECT_TRUE(account->non_private_training());
  EXPECT_EQ(account->private_steps(), 1);  // The DP-FedAvg round.
  EXPECT_EQ(EpsilonText(account->epsilon()), "∞ (non-private)");
  // From then on every round of a site with a budget is declined.
  Open(100);
  auto later = budget_->CheckRound(TrainTask("run-2", 1, "dp-sgd", 5.0), kImages, 1);
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(later->decline);
}

TEST_F(PrivacyBudgetTest, RecordingAnAttemptAgainReplacesItAndSurvivesAReopen) {
  Open(0);
  const v1::Task task = TrainTask("run-1", 1, "dp-sgd", 1.2);
  // Planned maximum before training, then the steps taken (early stopping), then the same again.
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2).ok());
  const double planned = budget_->Account()->epsilon();
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2, 9).ok());
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2, 9).ok());
  auto ledger = db_->PrivacyLedger();
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  ASSERT_EQ(ledger->size(), 1u);
  EXPECT_EQ((*ledger)[0].steps, 9);
  EXPECT_EQ((*ledger)[0].mechanism, "dp-sgd");
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSteps(16.0 / kImages, 1.2, 9).ok());
  const double expected = Epsilon(accountant);
  EXPECT_NEAR(budget_->Account()->epsilon(), expected, 1e-9 * expected);
  EXPECT_LT(expected, planned);

  Open(0);  // A new agent on the same site.db.
  auto reopened = budget_->Account();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_NEAR(reopened->epsilon(), expected, 1e-9 * expected);
  EXPECT_EQ(reopened->private_steps(), 9);
}

TEST_F(PrivacyBudgetTest, ReRecordsNeverLowerAnAttempt) {
  Open(0);
  const v1::Task task = TrainTask("run-1", 1, "dp-sgd", 1.2);
  // What training did (9 steps) replaces the planned maximum; a later, smaller record of the same attempt (a
  // coordinator re-sending it with a cheaper plan) does not lower it.
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2).ok());
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2, 9).ok());
  const double nine = budget_->Account()->epsilon();
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2, 4).ok());
  EXPECT_EQ(budget_->Account()->epsilon(), nine);
  EXPECT_EQ((*db_->PrivacyLedger())[0].steps, 9);
  v1::Task cheaper = task;
  cheaper.mutable_plan()->set_local_epochs(1);
  cheaper.mutable_plan()->set_dp_noise_multiplier(50);
  ASSERT_TRUE(budget_->RecordRound(cheaper, RoundShape{kImages, 1, 0, 1}, std::nullopt).ok());
  ASSERT_TRUE(budget_->RecordRound(cheaper, kImages, 2).ok());
  EXPECT_EQ(budget_->Account()->epsilon(), nine);
  // A record spending more replaces it.
  ASSERT_TRUE(budget_->RecordRound(task, kImages, 2, 30).ok());
  EXPECT_GT(budget_->Account()->epsilon(), nine);
  EXPECT_EQ((*db_->PrivacyLedger())[0].steps, 30);

  // A "none" row is never replaced by a private one: the site stays non-private.
  const v1::Task plain = TrainTask("run-2", 1, "none", 0);
  ASSERT_TRUE(budget_->RecordRound(plain, kImages, 1).ok());
  v1::Task now_private = plain;
  now_private.mutable_plan()->set_dp("dp-sgd");
  now_private.mutable_plan()->set_dp_noise_multiplier(1.0);
  ASSERT_TRUE(budget_->RecordRound(now_private, kImages, 1, 1).ok());
  auto account = budget_->Account();
  ASSERT_TRUE(account.ok()) << account.status();
  EXPECT_TRUE(std::isinf(account->epsilon()));
  EXPECT_TRUE(account->non_private_training());
}

TEST_F(PrivacyBudgetTest, TheDuoNetIsAccountedAtItsOwnSampleRateOfStudyPairs) {
  Open(0);
  const v1::Task task = TrainTask("run-1", 1, "dp-sgd", 1.1, /*epochs=*/2);
  // 3 members on 200 images, the DuoNet on 40 training study pairs, batch 16.
  const RoundShape shape{kImages, 3, 40, 1};
  auto decision = budget_->CheckRound(task, shape);
  ASSERT_TRUE(decision.ok()) << decision.status();
  auto members = privacy::PlanDpSgd(kImages, 16, 2);
  auto duo = privacy::PlanDpSgd(40, 16, 2);
  ASSERT_TRUE(members.ok() && duo.ok());
  privacy::RdpAccountant exact;
  ASSERT_TRUE(exact.AddSteps(members->sample_rate, 1.1, 3 * members->max_steps).ok());
  ASSERT_TRUE(exact.AddSteps(duo->sample_rate, 1.1, duo->max_steps).ok());
  const double expected = Epsilon(exact);
  EXPECT_NEAR(decision->epsilon_after, expected, 1e-9 * expected);
  // The DuoNet at the images' sample rate (16/200 instead of 16/40) would under-count.
  auto as_images = budget_->CheckRound(task, kImages, 4);
  ASSERT_TRUE(as_images.ok());
  EXPECT_LT(as_images->epsilon_after * 1.2, expected);
  // DITTO doubles every network.
  auto ditto = budget_->CheckRound(task, RoundShape{kImages, 3, 40, 2});
  ASSERT_TRUE(ditto.ok());
  ASSERT_TRUE(exact.AddSteps(members->sample_rate, 1.1, 3 * members->max_steps).ok());
  ASSERT_TRUE(exact.AddSteps(duo->sample_rate, 1.1, duo->max_steps).ok());
  EXPECT_NEAR(ditto->epsilon_after, Epsilon(exact), 1e-9 * Epsilon(exact));

  // The planned row, then what training ran (per network), composed exactly, and kept across a reopen.
  ASSERT_TRUE(budget_->RecordRound(task, shape).ok());
  EXPECT_NEAR(budget_->Account()->epsilon(), expected, 1e-9 * expected);
  const std::vector<NetworkPhase> ran = {
      {"member0", 0.08, 1.1, 20}, {"member1", 0.08, 1.1, 17}, {"duonet", 0.4, 1.1, 5}};
  ASSERT_TRUE(budget_->RecordRound(task, shape, ran).ok());
  privacy::RdpAccountant actual;
  for (const NetworkPhase& n : ran) ASSERT_TRUE(actual.AddSteps(n.sample_rate, n.noise_multiplier, n.steps).ok());
  Open(0);
  auto account = budget_->Account();
  ASSERT_TRUE(account.ok()) << account.status();
  EXPECT_NEAR(account->epsilon(), Epsilon(actual), 1e-9 * Epsilon(actual));
  EXPECT_EQ(account->private_steps(), 42);
}

TEST_F(PrivacyBudgetTest, BadPlansAndCountsAreInvalidArgument) {
  Open(0);
  auto unknown = budget_->CheckRound(TrainTask("run-1", 1, "gaussian", 1.0), kImages, 1);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("'dp'"));
  auto no_noise = budget_->CheckRound(TrainTask("run-1", 1, "dp-sgd", 0), kImages, 1);
  EXPECT_EQ(no_noise.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_noise.status().message(), HasSubstr("dp_noise_multiplier"));
  EXPECT_EQ(budget_->CheckRound(TrainTask("run-1", 1, "dp-sgd", 1.0), 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(budget_->CheckRound(TrainTask("run-1", 1, "dp-sgd", 1.0), kImages, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(budget_->RecordRound(TrainTask("run-1", 1, "dp-sgd", 1.0), kImages, 1, -3).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(db_->PrivacyLedger()->empty());
}

TEST_F(PrivacyBudgetTest, CorruptLedgerRowsAreDataLossNamingTheRow) {
  const char* corruptions[] = {
      "UPDATE privacy_ledger SET sample_rate = 'abc';",
      "UPDATE privacy_ledger SET sample_rate = 2.5;",
      "UPDATE privacy_ledger SET noise_multiplier = -1;",
      "UPDATE privacy_ledger SET steps = -4;",
      "UPDATE privacy_ledger SET steps = 1e12;",
      "UPDATE privacy_ledger SET mechanism = 'laplace';",
      "UPDATE privacy_ledger SET round = 9999999999;",
      "UPDATE privacy_ledger SET mechanism = 'none';",  // With a sample rate and noise: not a "none" row.
      "UPDATE privacy_ledger SET phases = 'guessed';",
      "UPDATE privacy_ledger SET phases = 'actual' || char(10) || 'member0 0.1 1.0 -5';",
      "UPDATE privacy_ledger SET phases = 'actual' || char(10) || 'member0 1.5 1.0 5';",
      "UPDATE privacy_ledger SET phases = 'actual' || char(10) || 'member0 0.1';",
      "UPDATE privacy_ledger SET phases = 7;",
  };
  for (const char* sql : corruptions) {
    Open(5);
    ASSERT_TRUE(db_->database().Execute("DELETE FROM privacy_ledger;").ok());
    ASSERT_TRUE(budget_->RecordRound(TrainTask("run-7", 3, "dp-sgd", 1.0), kImages, 1).ok());
    ASSERT_TRUE(db_->database().Execute(sql).ok()) << sql;
    auto account = budget_->Account();
    EXPECT_EQ(account.status().code(), absl::StatusCode::kDataLoss) << sql;
    EXPECT_THAT(account.status().message(), HasSubstr("privacy_ledger")) << sql;
    EXPECT_THAT(account.status().message(), HasSubstr("run-7")) << sql;
    EXPECT_EQ(budget_->CheckRound(TrainTask("run-8", 1, "dp-sgd", 1.0), kImages, 1).status().code(),
              absl::StatusCode::kDataLoss)
        << sql;
  }
}

TEST_F(PrivacyBudgetTest, ALedgerWithoutPhasesGetsTheColumnAndKeepsItsRows) {
  Open(0);
  ASSERT_TRUE(db_->database().Execute("ALTER TABLE privacy_ledger DROP COLUMN phases;").ok());
  ASSERT_TRUE(db_->database()
                  .Execute("INSERT INTO privacy_ledger (run_id, round, attempt, mechanism, sample_rate, "
                           "noise_multiplier, steps, recorded_ms) VALUES ('old', 1, 0, 'dp-sgd', 0.08, 1.0, 25, 1);")
                  .ok());
  Open(0);  // An older agent's site.db: the column is added, the row read as one mechanism.
  auto account = budget_->Account();
  ASSERT_TRUE(account.ok()) << account.status();
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSteps(0.08, 1.0, 25).ok());
  EXPECT_NEAR(account->epsilon(), Epsilon(accountant), 1e-9 * Epsilon(accountant));
}

TEST(PrivacyReportTest, TheLocalReportGetsThePrivacyLineOnce) {
  fedtune::testing::TempDir tmp;
  tmp.WriteFile("round/report.json", R"({"models": {"a": {}}})");
  tmp.WriteFile("round/report.html",
                "<!DOCTYPE html>\n<html><head><title>t</title></head>\n<body>\n<h1>Site a</h1>\n<p>rest</p>\n");
  v1::PrivacyAccount account;
  account.set_epsilon(2.3456);
  account.set_delta(1e-5);
  account.set_max_epsilon(8);
  account.set_private_steps(42);
  EXPECT_EQ(PrivacyLine(account), "Privacy: epsilon 2.346 at delta 1e-05 (budget 8)");
  ASSERT_TRUE(AddPrivacyToLocalReport(tmp.Join("round"), account).ok());
  account.set_epsilon(3.5);
  ASSERT_TRUE(AddPrivacyToLocalReport(tmp.Join("round"), account).ok());  // Again: replaced, not added.

  const std::string html = *io::ReadFile(tmp.Join("round/report.html"));
  EXPECT_THAT(html, HasSubstr("<h1>Site a</h1>\n<p class=\"privacy\">Privacy: epsilon 3.5 at delta 1e-05 (budget "
                              "8)</p>\n<p>rest</p>"));
  EXPECT_EQ(html.find("2.346"), std::string::npos);
  const nlohmann::json json = nlohmann::json::parse(*io::ReadFile(tmp.Join("round/report.json")));
  EXPECT_TRUE(json.contains("models"));
  EXPECT_DOUBLE_EQ(json["privacy"]["epsilon"].get<double>(), 3.5);
  EXPECT_EQ(json["privacy"]["private_steps"].get<int64_t>(), 42);
  EXPECT_EQ(json["privacy"]["line"].get<std::string>(), PrivacyLine(account));

  // Non-private and no budget; JSON has no infinity: null with non_private_training.
  account.set_epsilon(std::numeric_limits<double>::infinity());
  account.set_non_private_training(true);
  account.set_max_epsilon(0);
  EXPECT_EQ(PrivacyLine(account), "Privacy: epsilon ∞ (non-private) at delta 1e-05 (no budget)");
  ASSERT_TRUE(AddPrivacyToLocalReport(tmp.Join("round"), account).ok());
  const nlohmann::json again = nlohmann::json::parse(*io::ReadFile(tmp.Join("round/report.json")));
  EXPECT_TRUE(again["privacy"]["epsilon"].is_null());
  EXPECT_TRUE(again["privacy"]["non_private_training"].get<bool>());

  // No report written (an empty test split): nothing to do. A report that is not ours: DataLoss naming it.
  EXPECT_TRUE(AddPrivacyToLocalReport(tmp.Join("nothing"), account).ok());
  tmp.WriteFile("bad/report.json", "[1, 2");
  const absl::Status bad = AddPrivacyToLocalReport(tmp.Join("bad"), account);
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("report.json"));
}

}  // namespace
}  // namespace fedtune::agent
