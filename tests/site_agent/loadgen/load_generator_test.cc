// fedtune-loadgen against a real coordinator: an in-process coordinator::Coordinator (real gRPC over mTLS, real
// SQLite and blob store) with a tiny model, and the LoadGenerator with 64 simulated sites whose certificates it
// enrols itself with the consortium CA (the project's PKI code). A 2-round FedAvg run with the final evaluation must
// complete with every update aggregated exactly once: 64 accepted updates per round, one per site, and a final global
// model equal to the one predicted from the sites' delta variants and sample counts (an update counted twice or
// missing changes it by far more than the tolerance; the test checks that too).
#include "site_agent/loadgen/load_generator.h"

#include <ATen/ATen.h>

#include <cmath>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/federation/states.h"
#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/key_pair.h"
#include "coordinator/coordinator_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::loadgen {
namespace {

using ::testing::HasSubstr;

constexpr int kSites = 64;
constexpr int kRounds = 2;

class LoadGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = pki::testing::MakeCa(tmp_.Join("ca"), "Loadgen Consortium");
    ASSERT_NE(ca_, nullptr);
    absl::StatusOr<pki::KeyPair> key = pki::KeyPair::Generate();
    ASSERT_TRUE(key.ok());
    pki::ServerCertificateSpec spec;
    spec.dns_names = {"localhost"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<pki::IssuedCertificate> cert = ca_->IssueServerCertificate(*key, spec);
    ASSERT_TRUE(cert.ok()) << cert.status();
    tmp_.WriteFile("server.pem", cert->pem);
    tmp_.WriteFile("server.key", *key->PrivateKeyPem());
    initial_ = coordinator::testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    config_.set_listen_address("127.0.0.1:0");
    config_.set_server_cert(tmp_.Join("server.pem"));
    config_.set_server_key(tmp_.Join("server.key"));
    config_.set_ca_dir(tmp_.Join("ca"));
    config_.set_state_dir(tmp_.Join("state"));
    config_.set_initial_model(tmp_.Join("initial.ckpt"));
    config_.set_task_wait_seconds(2);
    config_.set_auto_approve(true);
    absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> c = coordinator::Coordinator::Start(config_);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = *std::move(c);
  }

  LoadgenOptions Options() const {
    LoadgenOptions o;
    o.coordinator = absl::StrCat("localhost:", coordinator_->port());
    o.certs_dir = tmp_.Join("loadgen-certs");
    o.ca_dir = tmp_.Join("ca");
    o.work_dir = tmp_.Join("loadgen-work");
    o.sites = kSites;
    o.train_seconds = 0.2;
    o.heartbeat_seconds = 1;
    o.task_wait_seconds = 2;
    o.timeout_seconds = 240;
    o.ready_file = tmp_.Join("ready");
    return o;
  }

  // Runs the generator on a thread; once every site is approved, starts `run` (as `fedtune run start` would).
  LoadReport RunWith(const LoadgenOptions& options, const v1::RunConfig& run, std::string* run_id) {
    absl::StatusOr<std::unique_ptr<LoadGenerator>> gen = LoadGenerator::Create(options);
    EXPECT_TRUE(gen.ok()) << gen.status();
    if (!gen.ok()) return {};
    LoadReport report;
    std::thread runner([&] { report = (*gen)->Run(); });
    const bool ready = (*gen)->AwaitReady(absl::Seconds(120));
    EXPECT_TRUE(ready) << "the simulated sites were not all approved";
    if (ready) {
      absl::StatusOr<std::string> id = coordinator_->rounds()->StartRun(run);
      EXPECT_TRUE(id.ok()) << id.status();
      if (id.ok()) *run_id = *id;
      if (!id.ok()) (*gen)->Stop();
    } else {
      (*gen)->Stop();
    }
    runner.join();
    return report;
  }

  testing::TempDir tmp_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  fl::TensorMap initial_;
  v1::CoordinatorConfig config_;
  std::unique_ptr<coordinator::Coordinator> coordinator_;
};

fl::TensorMap DecodePayload(const std::string& path) {
  absl::StatusOr<std::string> bytes = io::ReadFile(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<v1::TensorBundle> bundle = fl::ParseTensorBundle(*bytes, path);
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  absl::StatusOr<fl::TensorMap> tensors = fl::DecodeTensors(*bundle);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  return tensors.ok() ? *tensors : fl::TensorMap{};
}

// The FedAvg step of one round in which the sites `counted` (site index -> times counted) uploaded their variants.
fl::TensorMap FedAvgStep(const std::vector<fl::TensorMap>& variants, const std::map<int, int>& counted) {
  fl::TensorMap sum;
  double weight = 0;
  for (const auto& [i, times] : counted) {
    const double n = static_cast<double>(SiteNumSamples(i)) * times;
    weight += n;
    for (const auto& [name, t] : variants[SiteVariant(i, static_cast<int>(variants.size()))]) {
      if (!fl::IsFloating(t)) continue;
      at::Tensor term = t.to(at::kDouble) * n;
      sum[name] = sum.count(name) ? sum[name] + term : term;
    }
  }
  for (auto& [name, t] : sum) t = t / weight;
  return sum;
}

// Largest |final - (initial + steps)| over the floating tensors.
double MaxError(const fl::TensorMap& final_model, const fl::TensorMap& initial, const fl::TensorMap& step, int rounds) {
  double worst = 0;
  for (const auto& [name, t] : final_model) {
    if (!fl::IsFloating(t)) {
      EXPECT_TRUE(at::equal(t, initial.at(name))) << name << ": integer counters take the largest delta, 0 here";
      continue;
    }
    const at::Tensor predicted = initial.at(name).to(at::kDouble) + step.at(name) * rounds;
    worst = std::max(worst, (t.to(at::kDouble) - predicted).abs().max().item<double>());
  }
  return worst;
}

TEST_F(LoadGeneratorTest, SixtyFourSitesTwoRoundsEveryUpdateAggregatedExactlyOnce) {
  v1::RunConfig run;
  run.set_name("loadgen exactly once");
  run.set_rounds(kRounds);
  run.set_min_sites(kSites);
  run.set_round_deadline_seconds(600);
  run.set_aggregation("fedavg");
  run.set_compression("fp32");
  run.set_final_evaluation(true);
  std::string run_id;
  const LoadReport report = RunWith(Options(), run, &run_id);
  ASSERT_TRUE(report.status.ok()) << report.status;
  ASSERT_FALSE(run_id.empty());
  EXPECT_EQ(report.run_id, run_id);
  EXPECT_TRUE(io::ReadFile(tmp_.Join("ready")).ok());

  // What the generator saw: 64 accepted uploads in each of the 2 rounds, 64 final reports.
  ASSERT_EQ(report.rounds.size(), static_cast<size_t>(kRounds));
  for (const RoundStats& r : report.rounds) {
    EXPECT_EQ(r.attempt, 1);
    EXPECT_EQ(r.tasks, kSites) << "round " << r.round;
    EXPECT_EQ(r.uploads, kSites) << "round " << r.round;
    EXPECT_EQ(r.refused + r.cancelled + r.dropped, 0) << "round " << r.round;
    EXPECT_EQ(r.bytes_up, kSites * report.payload_bytes) << "round " << r.round;
    EXPECT_GT(r.bytes_down, 0);
  }
  EXPECT_EQ(report.evaluations, kSites);
  EXPECT_EQ(report.encoding, "fp32");
  EXPECT_THAT(FormatReport(report, Options()), HasSubstr("total: 128 uploads accepted"));

  // What the coordinator recorded: the run completed; per round one accepted update per site, no other rows.
  coordinator::StateStore* store = coordinator_->store();
  absl::StatusOr<coordinator::RunRecord> record = store->GetRun(run_id);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state, federation::RunState::kCompleted);
  for (int round = 1; round <= kRounds; ++round) {
    absl::StatusOr<std::vector<coordinator::UpdateRecord>> updates =
        store->ListUpdates(run_id, round, std::nullopt, "", std::nullopt);
    ASSERT_TRUE(updates.ok()) << updates.status();
    std::set<std::string> sites;
    int64_t samples = 0;
    for (const coordinator::UpdateRecord& u : *updates) {
      EXPECT_EQ(u.status, federation::UploadStatus::kAccepted) << u.site_id << ": " << u.message;
      sites.insert(u.site_id);
      samples += u.num_samples;
    }
    EXPECT_EQ(updates->size(), static_cast<size_t>(kSites)) << "round " << round;
    EXPECT_EQ(sites.size(), static_cast<size_t>(kSites)) << "round " << round;
    EXPECT_EQ(samples, kSites * (kSites + 1) / 2) << "round " << round;
  }
  absl::StatusOr<std::vector<coordinator::MetricsRecord>> metrics = store->ListMetrics(run_id);
  ASSERT_TRUE(metrics.ok());
  int finals = 0;
  for (const auto& m : *metrics) finals += m.kind == "final" ? 1 : 0;
  EXPECT_EQ(finals, kSites);

  // The final global model: initial + 2 x the predicted FedAvg step of the variants (site i: variant i mod 2,
  // weight i + 1), from the payload files the sites uploaded.
  ASSERT_EQ(report.payloads.size(), 2u);
  std::vector<fl::TensorMap> variants;
  for (const DeltaPayload& p : report.payloads) variants.push_back(DecodePayload(p.path));
  std::map<int, int> everyone;
  for (int i = 0; i < kSites; ++i) everyone[i] = 1;
  const fl::TensorMap step = FedAvgStep(variants, everyone);
  ASSERT_FALSE(record->final_model_digest.empty());
  const fl::TensorMap final_model =
      coordinator::testing::LoadTensors(coordinator_->blobs()->PathOf(record->final_model_digest));
  ASSERT_EQ(final_model.size(), initial_.size());
  // float32 rounding of weights of magnitude up to a few units: about 1e-6 at most.
  constexpr double kTolerance = 5e-6;
  const double error = MaxError(final_model, initial_, step, kRounds);
  EXPECT_LT(error, kTolerance);
  std::cout << "final global model: largest |actual - predicted| = " << error << "\n";

  // The check can fail: the lightest site (0, a zero delta) missing, or counted twice, in one round moves the model
  // by 0.25 x 1056 x (1/2079 - 1/2080) = 6.1e-5 (weights 2080 = 1 + ... + 64, odd sites 2 + 4 + ... + 64 = 1056).
  std::map<int, int> missing = everyone;
  missing.erase(0);
  std::map<int, int> twice = everyone;
  twice[0] = 2;
  for (const std::map<int, int>& wrong : {missing, twice}) {
    fl::TensorMap off = FedAvgStep(variants, wrong);
    for (auto& [name, t] : off) t = (t + step.at(name)) / 2;  // One round right, one wrong.
    EXPECT_GT(MaxError(final_model, initial_, off, kRounds), 5 * kTolerance);
  }
}

TEST_F(LoadGeneratorTest, DropoutsAndStragglersCloseRoundsAtTheDeadline) {
  // 8 sites, 2 drop out of every round: the round closes at its 3 s deadline with the 6 others (min_sites 6).
  LoadgenOptions options = Options();
  options.sites = 8;
  options.dropout = 0.25;
  options.stragglers = 0.25;
  options.straggler_delay_seconds = 0.5;
  options.rounds = 2;
  v1::RunConfig run;
  run.set_rounds(2);
  run.set_min_sites(6);
  run.set_round_deadline_seconds(3);
  run.set_final_evaluation(false);
  std::string run_id;
  const LoadReport report = RunWith(options, run, &run_id);
  ASSERT_TRUE(report.status.ok()) << report.status;
  ASSERT_EQ(report.rounds.size(), 2u);
  for (const RoundStats& r : report.rounds) {
    EXPECT_EQ(r.tasks, 8);
    EXPECT_EQ(r.dropped, 2);
    EXPECT_EQ(r.stragglers, 2);
    EXPECT_EQ(r.uploads, 6);
  }
  for (int round = 1; round <= 2; ++round) {
    absl::StatusOr<std::vector<coordinator::UpdateRecord>> updates =
        coordinator_->store()->ListUpdates(run_id, round, std::nullopt, "", federation::UploadStatus::kAccepted);
    ASSERT_TRUE(updates.ok());
    std::set<std::string> expected;
    for (int i = 0; i < 8; ++i) {
      if (RoleInRound(options, i, round, 1) != SiteRole::kDropOut) expected.insert(SiteId(options.site_prefix, i));
    }
    std::set<std::string> got;
    for (const auto& u : *updates) got.insert(u.site_id);
    EXPECT_EQ(got, expected) << "round " << round;
  }
}

TEST_F(LoadGeneratorTest, UnknownSitesWithoutCaDirAreRefusedBeforeConnecting) {
  LoadgenOptions options = Options();
  options.ca_dir = "";
  options.ca_cert = tmp_.Join("ca/ca.pem");
  absl::StatusOr<std::unique_ptr<LoadGenerator>> gen = LoadGenerator::Create(options);
  ASSERT_FALSE(gen.ok());
  EXPECT_EQ(gen.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gen.status().message(), HasSubstr("loadgen-0000.pem"));
  EXPECT_THAT(gen.status().message(), HasSubstr("--ca-dir"));
}

}  // namespace
}  // namespace fedtune::loadgen
