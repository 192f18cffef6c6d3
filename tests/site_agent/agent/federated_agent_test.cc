// The agent's task loop end to end against the fake coordinator (fake_coordinator.h) over real mTLS: a tiny
// DenseNet on 60 synthetic 32-px images, one TRAIN task (int8 delta with error feedback, an upload cut mid-stream)
// and one EVALUATE task; then a "restarted" agent on the same work_dir is offered the same TRAIN task again.
#include "site_agent/agent/federated_agent.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/cli/command.h"
#include "common/data/chexpert_labels.h"
#include "common/fl/bundle_file.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/model/checkpoint.h"
#include "common/pki/key_pair.h"
#include "common/privacy/dp_plan.h"
#include "common/privacy/rdp_accountant.h"
#include "common/secagg/fixed_point.h"
#include "common/secagg/session.h"
#include "common/status_macros.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"
#include "common/train/site_data.h"
#include "common/train/threads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/agent/local_baseline.h"
#include "site_agent/agent/privacy_budget.h"
#include "site_agent/agent/run_command.h"
#include "site_agent/agent/secure_aggregation.h"
#include "site_agent/commands/model_init.h"
#include "tests/site_agent/agent/fake_coordinator.h"
#include "tests/site_agent/agent/secagg_peers.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;

void ExpectSummaryOnly(const v1::MetricsReport& report) {
  // Names and labels only: no file, image or case identifier anywhere in what leaves the site.
  const std::string text = report.DebugString();
  EXPECT_EQ(text.find("patient"), std::string::npos);
  EXPECT_EQ(text.find(".png"), std::string::npos);
  EXPECT_EQ(text.find("/"), std::string::npos);
}

// 60 synthetic 32-px images of profile site-a, a tiny DenseNet served by the fake coordinator, a site config for it,
// and the run's TRAIN (int8, one epoch) and EVALUATE tasks.
struct AgentSetup {
  explicit AgentSetup(const fedtune::testing::TempDir& tmp, const std::string& cert_site = "site-a")
      : coordinator(tmp, cert_site) {
    synth::SynthOptions data;
    auto profile = synth::LoadProfile("site-a");
    EXPECT_TRUE(profile.ok()) << profile.status();
    data.profile = *profile;
    data.count = 60;
    data.size = 32;
    data.seed = 2;
    data.out_dir = tmp.Join("data");
    EXPECT_TRUE(synth::GenerateDataset(data).ok());
    auto init = InitCheckpoint({"densenet_tiny"}, 32, 0.2, 0);
    EXPECT_TRUE(init.ok()) << init.status();
    model_path = tmp.Join("init.ckpt");
    EXPECT_TRUE(model::SaveCheckpoint(&*init, model_path).ok());
    model_bytes = *io::ReadFile(model_path);
    digest = io::Sha256Hex(model_bytes);
    coordinator.service().AddModel(model_bytes);

    const std::string config_text = absl::StrCat(
        "site_id: \"site-a\" coordinator: \"", coordinator.address(), "\" site_cert: \"", coordinator.site_tls().cert,
        "\" site_key: \"", coordinator.site_tls().key, "\" ca_cert: \"", coordinator.site_tls().ca,
        "\" work_dir: \"work\" heartbeat_seconds: 1 rpc_timeout_seconds: 20 min_backoff_ms: 1 max_backoff_ms: 20 "
        "exit_after_runs: 1 gradcam_per_label: 0 "
        "finetune { manifest: \"data/manifest.csv\" device: \"cpu\" threads: 2 loader_threads: 1 batch_size: 16 "
        "patience: 2 augment: false split { train: 0.6 validation: 0.2 test: 0.2 } }");
    auto loaded = LoadAgentConfig(tmp.WriteFile("site.textproto", config_text));
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (loaded.ok()) config = *loaded;
    // What `fedtune-site run` does for the process before it creates the agent.
    train::SetIntraOpThreads(config.finetune().threads());

    train.set_kind(v1::Task::TRAIN);
    train.set_run_id("run-1");
    train.set_round(1);
    train.set_attempt(1);
    train.set_model_digest(digest);
    train.set_model_bytes(static_cast<int64_t>(model_bytes.size()));
    train.set_base_model_digest(digest);
    train.set_base_model_bytes(static_cast<int64_t>(model_bytes.size()));
    train.set_total_rounds(1);
    train.mutable_plan()->set_local_epochs(1);
    train.mutable_plan()->set_learning_rate(0.05);
    train.mutable_plan()->set_batch_size(16);
    train.mutable_plan()->set_encoding("int8");
    evaluate.set_kind(v1::Task::EVALUATE);
    evaluate.set_run_id("run-1");
    evaluate.set_model_digest(digest);
    evaluate.set_model_bytes(static_cast<int64_t>(model_bytes.size()));
    evaluate.set_base_model_digest(digest);
    evaluate.set_base_model_bytes(static_cast<int64_t>(model_bytes.size()));
    options.task_wait_seconds = 1;
  }

  testing::FakeCoordinator coordinator;
  std::string model_path;
  std::string model_bytes;
  std::string digest;
  v1::SiteAgentConfig config;
  v1::Task train;
  v1::Task evaluate;
  AgentOptions options;
};

TEST(FederatedAgentTest, TrainAndEvaluateTasksEndToEnd) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  const v1::SiteAgentConfig& config = setup.config;
  const v1::Task& train = setup.train;
  const std::string& digest = setup.digest;
  coordinator.service().AddTask(setup.train);
  coordinator.service().AddTask(setup.evaluate);
  coordinator.service().CutNextUploadAfter(8192);  // The first upload stream breaks after two 4 KiB chunks.
  coordinator.service().CutNextDownloadAfter(3000);
  coordinator.service().PendingHellos(1);  // Not approved yet at the first Hello.

  const AgentOptions& options = setup.options;
  {
    auto agent = FederatedAgent::Create(config, options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    EXPECT_EQ((*agent)->hello_request().dataset().images(), 60);
    EXPECT_EQ((*agent)->hello_request().dataset().labels_size(), data::kNumChexpertLabels);
    EXPECT_EQ((*agent)->hello_request().capabilities().device(), "cpu");
    const absl::Status run = (*agent)->Run();
    ASSERT_TRUE(run.ok()) << run;
    EXPECT_EQ((*agent)->finished_runs(), 1);
  }
  EXPECT_EQ(coordinator.service().calls("Hello"), 2);  // Pending, then approved.

  // The upload decodes, against the global model, to a delta with its names, shapes and dtypes.
  const std::string upload = coordinator.service().accepted_upload("run-1", 1);
  ASSERT_FALSE(upload.empty());
  EXPECT_EQ(coordinator.service().last_upload_header().encoding(), "int8");
  EXPECT_EQ(coordinator.service().last_upload_header().delta_encoding(), v1::NamedTensor::INT8);
  EXPECT_GT(coordinator.service().last_upload_header().num_samples(), 20);
  EXPECT_EQ(coordinator.service().upload_offsets().size(), 2u);
  EXPECT_EQ(coordinator.service().upload_offsets()[1], 8192);
  auto global = model::LoadCheckpoint(setup.model_path);
  ASSERT_TRUE(global.ok());
  const fl::TensorMap global_tensors = fl::CheckpointTensors(*global);
  auto bundle = fl::ParseTensorBundle(upload);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  auto delta = fl::DecodeTensors(*bundle, &global_tensors);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_EQ(delta->size(), global_tensors.size());
  EXPECT_GT(fl::L2Norm(*delta), 0);

  const fs::path work = tmp.Join("work");
  const fs::path round_dir = work / "runs" / "run-1" / "round-1-1";
  EXPECT_TRUE(fs::exists(work / "adapted" / "run-1" / "model.ckpt"));
  EXPECT_TRUE(fs::exists(round_dir / "report.html"));
  EXPECT_TRUE(fs::exists(round_dir / "update.bin"));
  // int8 keeps an error-feedback residual: the round started from none and left one (fp32) for the next round.
  EXPECT_EQ(fs::file_size(round_dir / "residual.before.bin"), 0u);
  auto residual_bytes = io::ReadFile((work / "runs" / "run-1" / "residual.bin").string());
  ASSERT_TRUE(residual_bytes.ok()) << residual_bytes.status();
  auto residual_bundle = fl::ParseTensorBundle(*residual_bytes);
  ASSERT_TRUE(residual_bundle.ok()) << residual_bundle.status();
  auto residual = fl::DecodeTensors(*residual_bundle);
  ASSERT_TRUE(residual.ok()) << residual.status();
  EXPECT_FALSE(residual->empty());
  EXPECT_GT(fl::L2Norm(*residual), 0);
  for (const auto& [name, tensor] : *residual) {
    EXPECT_FALSE(fl::IsBatchNormStatistic(name)) << name;
    EXPECT_EQ(tensor.sizes(), global_tensors.at(name).sizes()) << name;
  }
  EXPECT_TRUE(fs::exists(work / "reports" / "run-1" / "adapted-vs-global" / "report.html"));
  EXPECT_TRUE(fs::exists(work / "models" / (digest + ".ckpt")));

  // One round report and one final report, 14 labels each, summary values only.
  const std::vector<v1::MetricsReport> reports = coordinator.service().reports();
  ASSERT_EQ(reports.size(), 2u);
  const v1::MetricsReport& round = reports[0];
  EXPECT_EQ(round.kind(), "round");
  EXPECT_EQ(round.round(), 1);
  ASSERT_EQ(round.models_size(), 2);
  EXPECT_EQ(round.models(0).name(), "global");
  EXPECT_EQ(round.models(1).name(), "local");
  EXPECT_EQ(round.models(0).digest(), global->weights_sha256);
  ASSERT_EQ(round.comparisons_size(), 1);
  EXPECT_EQ(round.comparisons(0).labels_size(), data::kNumChexpertLabels);
  EXPECT_GT(round.test_cases(), 0);
  EXPECT_GT(round.validation_loss(), 0);
  const v1::MetricsReport& final_report = reports[1];
  EXPECT_EQ(final_report.kind(), "final");
  EXPECT_EQ(final_report.round(), 0);
  ASSERT_EQ(final_report.models_size(), 3);
  EXPECT_EQ(final_report.models(0).name(), "open-source");
  EXPECT_EQ(final_report.models(1).name(), "global");
  EXPECT_EQ(final_report.models(2).name(), "adapted");
  ASSERT_EQ(final_report.comparisons_size(), 3);
  EXPECT_EQ(final_report.comparisons(2).model_a(), "global");
  EXPECT_EQ(final_report.comparisons(2).model_b(), "adapted");
  for (const v1::MetricsReport& report : reports) {
    for (const v1::ModelEvaluation& m : report.models()) EXPECT_EQ(m.labels_size(), data::kNumChexpertLabels);
    ExpectSummaryOnly(report);
    // A round without differential privacy: the site's epsilon is unbounded from then on (no budget: trained).
    EXPECT_TRUE(report.privacy().non_private_training()) << report.kind();
    EXPECT_TRUE(std::isinf(report.privacy().epsilon())) << report.kind();
    EXPECT_DOUBLE_EQ(report.privacy().delta(), 1e-5);
  }
  EXPECT_THAT(*io::ReadFile((round_dir / "report.html").string()),
              ::testing::HasSubstr("Privacy: epsilon ∞ (non-private) at delta 1e-05 (no budget)"));
  EXPECT_THAT(*io::ReadFile((work / "reports" / "run-1" / "adapted-vs-global" / "report.json").string()),
              ::testing::HasSubstr("\"non_private_training\": true"));

  // Heartbeats said what the agent was doing.
  std::set<std::string> states;
  for (const v1::HeartbeatRequest& h : coordinator.service().heartbeats()) states.insert(h.state());
  EXPECT_TRUE(states.count("downloading")) << ::testing::PrintToString(states);  // A task's first state.
  EXPECT_TRUE(states.count("done")) << ::testing::PrintToString(states);         // Its last, always sent.

  // A restarted agent offered the same task again re-uses the recorded update: nothing is encoded or sent again.
  const std::string update_before = *io::ReadFile((round_dir / "update.bin").string());
  const int streams = coordinator.service().calls("UploadUpdate");
  {
    auto agent = FederatedAgent::Create(config, options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status again = (*agent)->RunTask(train);
    ASSERT_TRUE(again.ok()) << again;
  }
  EXPECT_EQ(*io::ReadFile((round_dir / "update.bin").string()), update_before);
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
  EXPECT_EQ(coordinator.service().reports().size(), 3u);

  // The same after an upgrade to a budget: a round trained before its privacy was accounted (no ledger row) is
  // accounted now and completed, not declined, although a non-private round is over any budget.
  {
    auto db = AgentDatabase::Open((work / "site.db").string());
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->database().Execute("DELETE FROM privacy_ledger;").ok());
    v1::SiteAgentConfig budgeted = config;
    budgeted.set_max_epsilon(1);
    auto agent = FederatedAgent::Create(budgeted, options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status again = (*agent)->RunTask(train);
    ASSERT_TRUE(again.ok()) << again;
    EXPECT_TRUE(coordinator.service().declines().empty());
    auto ledger = (*db)->PrivacyLedger();
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ASSERT_EQ(ledger->size(), 1u);
    EXPECT_EQ((*ledger)[0].mechanism, "none");
  }
  EXPECT_EQ(coordinator.service().reports().size(), 4u);

  // An agent killed after its upload was accepted (the coordinator offers no task again) completes the round when
  // it restarts; Task.ended_runs then ends the run for it.
  {
    auto db = AgentDatabase::Open((work / "site.db").string());
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)
                    ->database()
                    .Execute("UPDATE fed_tasks SET state = 'uploaded' WHERE kind = 'train'; "
                             "DELETE FROM fed_runs;")
                    .ok());
  }
  v1::Task ended;
  ended.set_kind(v1::Task::NONE);
  ended.add_ended_runs("run-0");  // Not one of this site's runs: ignored.
  ended.add_ended_runs("run-1");
  coordinator.service().AddTask(ended);
  {
    auto agent = FederatedAgent::Create(config, options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status run = (*agent)->Run();
    ASSERT_TRUE(run.ok()) << run;
    EXPECT_EQ((*agent)->finished_runs(), 1);
  }
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
  ASSERT_EQ(coordinator.service().reports().size(), 5u);
  EXPECT_EQ(coordinator.service().reports()[4].kind(), "round");
  auto db = AgentDatabase::Open((work / "site.db").string());
  ASSERT_TRUE(db.ok()) << db.status();
  auto record = (*db)->FindTask({"run-1", 1, 1, "train"});
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->state, "done");
  EXPECT_EQ((*record)->update_sha256, io::Sha256Hex(upload));
  EXPECT_TRUE((*db)->InterruptedTrainTasks()->empty());
}

// The site's privacy budget (privacy_budget.h): a DP-SGD round within the budget is trained, its ledger row holds what
// training ran (train::DpSgdPhases: 1 epoch of the tiny model at batch / training images) and it is reported with
// that epsilon, without its losses; the next round, which would exceed max_epsilon, a round without differential
// privacy and a DP-FedAvg round without secure aggregation are declined before anything is downloaded (DeclineTask,
// "declined" in site.db), and the loop goes on. A re-sent recorded attempt with another plan is refused; the final
// evaluation skips the local-only baseline.
TEST(FederatedAgentTest, DeclinesTrainTasksBeyondItsPrivacyBudget) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  // One DP-SGD round at sigma 1.5 (one network, one epoch) fits the budget, two do not.
  constexpr double kSigma = 1.5;
  auto site = train::LoadSiteData(setup.config.finetune());
  ASSERT_TRUE(site.ok()) << site.status();
  const int64_t train_images = static_cast<int64_t>(site->split.EntriesIn(data::Split::kTrain).size());
  auto plan = privacy::PlanDpSgd(train_images, 16, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  privacy::RdpAccountant one;
  ASSERT_TRUE(one.AddSteps(plan->sample_rate, kSigma, plan->max_steps).ok());
  privacy::RdpAccountant two;
  ASSERT_TRUE(two.AddSteps(plan->sample_rate, kSigma, 2 * plan->max_steps).ok());
  const double one_round = one.GetPrivacySpent(1e-5)->epsilon;
  const double two_rounds = two.GetPrivacySpent(1e-5)->epsilon;
  ASSERT_LT(one_round * 1.1, two_rounds);
  setup.config.set_max_epsilon((one_round + two_rounds) / 2);

  v1::Task round1 = setup.train;
  round1.mutable_plan()->set_encoding("fp32");
  round1.mutable_plan()->set_dp("dp-sgd");
  round1.mutable_plan()->set_dp_noise_multiplier(kSigma);
  round1.mutable_plan()->set_dp_clip_norm(1.0);
  round1.set_total_rounds(4);
  v1::Task round2 = round1;
  round2.set_round(2);
  v1::Task round3 = round1;
  round3.set_round(3);
  round3.mutable_plan()->set_dp("none");
  v1::Task round4 = round1;
  round4.set_round(4);
  round4.mutable_plan()->set_dp("dp-fedavg");
  round4.mutable_plan()->set_dp_noise_multiplier(100);
  v1::Task ended;
  ended.set_kind(v1::Task::NONE);
  ended.add_ended_runs("run-1");
  for (const v1::Task* task : {&round1, &round2, &round3, &round4, &ended}) coordinator.service().AddTask(*task);
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status run = (*agent)->Run();
    ASSERT_TRUE(run.ok()) << run;
    EXPECT_EQ((*agent)->finished_runs(), 1);
  }
  // Round 1 was trained, uploaded and reported with its epsilon; no loss left the site.
  EXPECT_FALSE(coordinator.service().accepted_upload("run-1", 1).empty());
  EXPECT_TRUE(coordinator.service().accepted_upload("run-1", 2).empty());
  EXPECT_EQ(coordinator.service().last_upload_header().train_loss(), 0);
  EXPECT_EQ(coordinator.service().last_upload_header().validation_loss(), 0);
  for (const v1::HeartbeatRequest& h : coordinator.service().heartbeats()) EXPECT_EQ(h.train_loss(), 0);
  EXPECT_EQ(coordinator.service().download_offsets().size(), 1u);  // Rounds 2 to 4 downloaded nothing.
  const std::vector<v1::MetricsReport> reports = coordinator.service().reports();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].train_loss(), 0);
  EXPECT_EQ(reports[0].validation_loss(), 0);
  const v1::PrivacyAccount& reported = reports[0].privacy();
  EXPECT_NEAR(reported.epsilon(), one_round, 1e-9 * one_round);
  EXPECT_NEAR(reported.round_epsilon(), one_round, 1e-9 * one_round);
  EXPECT_DOUBLE_EQ(reported.max_epsilon(), setup.config.max_epsilon());
  EXPECT_DOUBLE_EQ(reported.delta(), 1e-5);
  EXPECT_EQ(reported.private_steps(), plan->max_steps);
  EXPECT_FALSE(reported.non_private_training());
  const fs::path work = tmp.Join("work");
  const std::string local_json = *io::ReadFile((work / "runs" / "run-1" / "round-1-1" / "report.json").string());
  EXPECT_THAT(local_json, ::testing::HasSubstr("\"privacy\""));
  EXPECT_THAT(local_json, ::testing::HasSubstr(EpsilonText(one_round)));

  // Rounds 2 to 4 were declined, with the reason and the account.
  const std::vector<v1::DeclineRequest> declines = coordinator.service().declines();
  ASSERT_EQ(declines.size(), 3u);
  EXPECT_EQ(declines[0].run_id(), "run-1");
  EXPECT_EQ(declines[0].round(), 2);
  EXPECT_EQ(declines[0].attempt(), 1);
  EXPECT_THAT(declines[0].reason(), ::testing::HasSubstr("max_epsilon"));
  EXPECT_THAT(declines[0].reason(), ::testing::HasSubstr("delta 1e-05"));
  EXPECT_NEAR(declines[0].privacy().epsilon(), one_round, 1e-9 * one_round);
  EXPECT_NEAR(declines[0].privacy().round_epsilon(), two_rounds, 1e-9 * two_rounds);
  EXPECT_EQ(declines[1].round(), 3);
  EXPECT_THAT(declines[1].reason(), ::testing::HasSubstr("unbounded"));
  EXPECT_TRUE(std::isinf(declines[1].privacy().round_epsilon()));
  EXPECT_EQ(declines[2].round(), 4);
  EXPECT_THAT(declines[2].reason(), ::testing::HasSubstr("dp-fedavg without secure aggregation"));
  EXPECT_NEAR(declines[2].privacy().epsilon(), one_round, 1e-9 * one_round);
  auto db = AgentDatabase::Open((work / "site.db").string());
  ASSERT_TRUE(db.ok()) << db.status();
  for (int round : {2, 3, 4}) {
    auto record = (*db)->FindTask({"run-1", round, 1, "train"});
    ASSERT_TRUE(record.ok() && record->has_value()) << round;
    EXPECT_EQ((*record)->state, "declined") << round;
    EXPECT_THAT((*record)->message, ::testing::HasSubstr(round == 4 ? "secure aggregation" : "max_epsilon")) << round;
  }
  auto trained = (*db)->FindTask({"run-1", 1, 1, "train"});
  ASSERT_TRUE(trained.ok() && trained->has_value());
  EXPECT_EQ((*trained)->state, "done");
  // Only the trained round is in the ledger: what training ran (one network, one epoch, all its steps).
  auto ledger = (*db)->PrivacyLedger();
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  ASSERT_EQ(ledger->size(), 1u);
  EXPECT_EQ((*ledger)[0].mechanism, "dp-sgd");
  EXPECT_EQ((*ledger)[0].steps, plan->max_steps);
  EXPECT_EQ((*ledger)[0].phases,
            absl::StrCat("actual\nmember0 ", absl::StrFormat("%.17g %.17g", plan->sample_rate, kSigma), " ",
                         plan->max_steps));
  std::set<std::string> states;
  for (const v1::HeartbeatRequest& h : coordinator.service().heartbeats()) states.insert(h.state());
  EXPECT_TRUE(states.count("declined")) << ::testing::PrintToString(states);

  // The recorded attempt re-sent with another plan (more epochs, less noise) is refused; nothing changes.
  auto agent = FederatedAgent::Create(setup.config, setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  for (int field = 0; field < 3; ++field) {
    v1::Task changed = round1;
    if (field == 0) changed.mutable_plan()->set_local_epochs(3);
    if (field == 1) changed.mutable_plan()->set_dp_noise_multiplier(0.5);
    if (field == 2) changed.mutable_plan()->set_batch_size(4);
    const absl::Status refused = (*agent)->RunTask(changed);
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
    EXPECT_THAT(refused.message(), ::testing::HasSubstr("another plan"));
  }
  EXPECT_EQ(coordinator.service().download_offsets().size(), 1u);
  EXPECT_EQ((*db)->FindTask({"run-1", 1, 1, "train"})->value().state, "done");
  auto after = (*db)->PrivacyLedger();
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ((*after)[0].steps, plan->max_steps);

  // The final evaluation of a site with a budget: no local-only baseline (trained without DP).
  v1::Task evaluate = setup.evaluate;
  evaluate.mutable_plan()->set_local_only_baseline(true);
  evaluate.mutable_plan()->set_local_only_epochs(1);
  evaluate.mutable_plan()->set_batch_size(16);
  const absl::Status evaluated = (*agent)->RunTask(evaluate);
  ASSERT_TRUE(evaluated.ok()) << evaluated;
  ASSERT_EQ(coordinator.service().reports().size(), 2u);
  const v1::MetricsReport final_report = coordinator.service().reports()[1];
  EXPECT_EQ(final_report.kind(), "final");
  for (const v1::ModelEvaluation& m : final_report.models()) EXPECT_NE(m.name(), "local-only");
  EXPECT_FALSE(fs::exists(work / "local-only"));
}

// Cross-site evaluation (cross_evaluation.h): a consenting site shares a copy of its adapted model (without its
// manifest's path) during the EVALUATE task, once; its run ends only after the CROSS_EVALUATE task, whose report
// holds the other site's model against the global model on the same cases.
TEST(FederatedAgentTest, SharesItsAdaptedModelOnceAndEvaluatesTheOthers) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  setup.config.set_share_adapted_model(true);
  v1::Task evaluate = setup.evaluate;
  evaluate.set_cross_site_evaluation(true);
  // site-b's shared adapted model: the same architecture with other weights.
  auto other = InitCheckpoint({"densenet_tiny"}, 32, 0.2, 5);
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(model::SaveCheckpoint(&*other, tmp.Join("site-b.ckpt")).ok());
  const std::string other_bytes = *io::ReadFile(tmp.Join("site-b.ckpt"));
  coordinator.service().AddModel(other_bytes);
  v1::Task cross = setup.evaluate;
  cross.set_kind(v1::Task::CROSS_EVALUATE);
  cross.set_cross_site_evaluation(true);
  v1::SharedModel* shared = cross.add_shared_models();
  shared->set_site_id("site-b");
  shared->set_digest(io::Sha256Hex(other_bytes));
  shared->set_bytes(static_cast<int64_t>(other_bytes.size()));
  coordinator.service().AddTask(setup.train);
  coordinator.service().AddTask(evaluate);
  coordinator.service().AddTask(cross);
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status run = (*agent)->Run();  // exit_after_runs 1: returns after the CROSS_EVALUATE task.
    ASSERT_TRUE(run.ok()) << run;
    EXPECT_EQ((*agent)->finished_runs(), 1);
  }
  // The shared copy: the adapted model's weights, no path of the site's data.
  const std::string uploaded = coordinator.service().accepted_upload("run-1", 0);
  ASSERT_FALSE(uploaded.empty());
  EXPECT_EQ(coordinator.service().last_upload_header().kind(), v1::UPLOAD_KIND_ADAPTED_MODEL);
  const fs::path work = tmp.Join("work");
  EXPECT_EQ(uploaded, *io::ReadFile((work / "runs" / "run-1" / "shared-adapted.ckpt").string()));
  EXPECT_EQ(uploaded.find("manifest"), std::string::npos);
  EXPECT_EQ(uploaded.find(tmp.path()), std::string::npos);
  auto adapted = model::LoadCheckpoint((work / "adapted" / "run-1" / "model.ckpt").string());
  auto copy = model::LoadCheckpoint((work / "runs" / "run-1" / "shared-adapted.ckpt").string());
  ASSERT_TRUE(adapted.ok() && copy.ok());
  EXPECT_EQ(copy->weights_sha256, adapted->weights_sha256);
  EXPECT_THAT(copy->metadata.provenance.source, ::testing::HasSubstr("adapted model of site site-a"));

  const std::vector<v1::MetricsReport> reports = coordinator.service().reports();
  ASSERT_EQ(reports.size(), 3u);
  EXPECT_EQ(reports[1].kind(), "final");
  EXPECT_TRUE(reports[1].adapted_model_shared());
  const v1::MetricsReport& cross_report = reports[2];
  EXPECT_EQ(cross_report.kind(), "cross_site");
  EXPECT_EQ(cross_report.round(), 0);
  ASSERT_EQ(cross_report.models_size(), 2);
  EXPECT_EQ(cross_report.models(0).name(), "global");
  EXPECT_EQ(cross_report.models(1).name(), "site-b");
  EXPECT_EQ(cross_report.models(1).digest(), other->weights_sha256);
  EXPECT_EQ(cross_report.models(1).labels_size(), data::kNumChexpertLabels);
  ASSERT_EQ(cross_report.comparisons_size(), 1);
  EXPECT_EQ(cross_report.comparisons(0).model_a(), "global");
  EXPECT_EQ(cross_report.comparisons(0).model_b(), "site-b");
  EXPECT_EQ(cross_report.test_cases(), reports[1].test_cases());
  ExpectSummaryOnly(cross_report);
  EXPECT_TRUE(fs::exists(work / "reports" / "run-1" / "cross-site-b" / "report.html"));

  // A restarted agent given the EVALUATE task again does not upload its model again.
  const int streams = coordinator.service().calls("UploadUpdate");
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status again = (*agent)->RunTask(evaluate);
    ASSERT_TRUE(again.ok()) << again;
  }
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
  EXPECT_TRUE(coordinator.service().reports().back().adapted_model_shared());

  // A site that declines uploads nothing and says so in its final report.
  setup.config.set_share_adapted_model(false);
  v1::Task other_run = evaluate;
  other_run.set_run_id("run-2");
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    ASSERT_TRUE((*agent)->RunTask(other_run).ok());
  }
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
  EXPECT_EQ(coordinator.service().reports().back().run_id(), "run-2");
  EXPECT_FALSE(coordinator.service().reports().back().adapted_model_shared());
}

// FEDBN: the upload carries no BatchNorm tensor, the site keeps its own in local_bn.bin, the final evaluation's
// adapted model is the global model with them, and the reports say FEDBN. A restart re-uses the recorded update.
TEST(FederatedAgentTest, FedBnKeepsBatchNormAtTheSite) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  setup.train.mutable_plan()->set_personalization(v1::PERSONALIZATION_FEDBN);
  setup.evaluate.mutable_plan()->set_personalization(v1::PERSONALIZATION_FEDBN);
  coordinator.service().AddTask(setup.train);
  coordinator.service().AddTask(setup.evaluate);
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status run = (*agent)->Run();
    ASSERT_TRUE(run.ok()) << run;
  }
  auto global = model::LoadCheckpoint(setup.model_path);
  ASSERT_TRUE(global.ok());
  const std::set<std::string> local = *fl::LocalTensorNames(*global, v1::PERSONALIZATION_FEDBN);
  const std::set<std::string> shared = *fl::SharedTensorNames(*global, v1::PERSONALIZATION_FEDBN);
  ASSERT_FALSE(local.empty());
  const std::string upload = coordinator.service().accepted_upload("run-1", 1);
  auto bundle = fl::ParseTensorBundle(upload);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  std::set<std::string> sent;
  for (const v1::NamedTensor& t : bundle->tensors()) sent.insert(t.name());
  EXPECT_EQ(sent, shared);
  for (const std::string& name : local) EXPECT_EQ(sent.count(name), 0u) << name << " left the site";

  const fs::path work = tmp.Join("work");
  const fs::path run_dir = work / "runs" / "run-1";
  auto kept = fl::DecodeTensorBundleFile((run_dir / "local_bn.bin").string());
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->size(), local.size());
  auto adapted = model::LoadCheckpoint((work / "adapted" / "run-1" / "model.ckpt").string());
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  const fl::TensorMap a = fl::CheckpointTensors(*adapted);
  const fl::TensorMap g = fl::CheckpointTensors(*global);
  int own_differs = 0;
  for (const auto& [name, tensor] : a) {
    if (local.count(name)) {
      EXPECT_TRUE(tensor.equal(kept->at(name))) << name;
      own_differs += tensor.equal(g.at(name)) ? 0 : 1;
    } else {
      EXPECT_TRUE(tensor.equal(g.at(name))) << name;
    }
  }
  EXPECT_GT(own_differs, 0);
  const std::vector<v1::MetricsReport> reports = coordinator.service().reports();
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].personalization(), v1::PERSONALIZATION_FEDBN);
  EXPECT_EQ(reports[1].personalization(), v1::PERSONALIZATION_FEDBN);
  ASSERT_EQ(reports[1].models_size(), 3);
  EXPECT_EQ(reports[1].models(2).name(), "adapted");
  EXPECT_EQ(reports[1].models(2).digest(), adapted->weights_sha256);

  // Restarted and offered the round again after its kept tensors moved on: the same update, nothing sent again.
  const std::string update_before = *io::ReadFile((run_dir / "round-1-1" / "update.bin").string());
  const int streams = coordinator.service().calls("UploadUpdate");
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    ASSERT_TRUE((*agent)->RunTask(setup.train).ok());
  }
  EXPECT_EQ(*io::ReadFile((run_dir / "round-1-1" / "update.bin").string()), update_before);
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
}

// DITTO: the full delta goes up; the personal model is trained toward the global one, kept, and is the adapted model.
TEST(FederatedAgentTest, DittoTrainsAndKeepsAPersonalModel) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  setup.train.mutable_plan()->set_personalization(v1::PERSONALIZATION_DITTO);
  setup.train.mutable_plan()->set_ditto_lambda(0.5);
  setup.evaluate.mutable_plan()->set_personalization(v1::PERSONALIZATION_DITTO);
  coordinator.service().AddTask(setup.train);
  coordinator.service().AddTask(setup.evaluate);
  {
    auto agent = FederatedAgent::Create(setup.config, setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status run = (*agent)->Run();
    ASSERT_TRUE(run.ok()) << run;
  }
  auto global = model::LoadCheckpoint(setup.model_path);
  ASSERT_TRUE(global.ok());
  auto bundle = fl::ParseTensorBundle(coordinator.service().accepted_upload("run-1", 1));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ(static_cast<size_t>(bundle->tensors_size()), fl::CheckpointTensors(*global).size());
  const fs::path work = tmp.Join("work");
  const fs::path round_dir = work / "runs" / "run-1" / "round-1-1";
  auto personal = model::LoadCheckpoint((work / "runs" / "run-1" / "personal.ckpt").string());
  ASSERT_TRUE(personal.ok()) << personal.status();
  auto tuned = model::LoadCheckpoint((round_dir / "model.ckpt").string());
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_NE(personal->weights_sha256, global->weights_sha256);
  EXPECT_NE(personal->weights_sha256, tuned->weights_sha256);
  EXPECT_EQ(model::LoadCheckpoint((work / "adapted" / "run-1" / "model.ckpt").string())->weights_sha256,
            personal->weights_sha256);
  const std::vector<v1::MetricsReport> reports = coordinator.service().reports();
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].personalization(), v1::PERSONALIZATION_DITTO);
  ASSERT_EQ(reports[1].models_size(), 3);
  EXPECT_EQ(reports[1].models(2).digest(), personal->weights_sha256);
}

// The final evaluation with the local-only baseline: the base model fine-tuned on the site's own split is reported as
// "local-only" and compared with the open-source, global and adapted models on the same cases; a second run from
// the same base model reuses it.
TEST(FederatedAgentTest, FinalEvaluationWithTheLocalOnlyBaseline) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  testing::FakeCoordinator& coordinator = setup.coordinator;
  v1::Task evaluate = setup.evaluate;
  evaluate.mutable_plan()->set_local_only_baseline(true);
  evaluate.mutable_plan()->set_local_only_epochs(1);
  evaluate.mutable_plan()->set_learning_rate(0.05);
  evaluate.mutable_plan()->set_batch_size(16);
  auto agent = FederatedAgent::Create(setup.config, setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  ASSERT_TRUE((*agent)->RunTask(setup.train).ok());
  const absl::Status evaluated = (*agent)->RunTask(evaluate);
  ASSERT_TRUE(evaluated.ok()) << evaluated;

  ASSERT_EQ(coordinator.service().reports().size(), 2u);
  const v1::MetricsReport final_report = coordinator.service().reports()[1];
  EXPECT_EQ(final_report.kind(), "final");
  std::map<std::string, const v1::ModelEvaluation*> models;
  for (const v1::ModelEvaluation& m : final_report.models()) models[m.name()] = &m;
  ASSERT_EQ(models.size(), 4u) << final_report.DebugString();
  ASSERT_TRUE(models.count("local-only"));
  const v1::ModelEvaluation& local_only = *models["local-only"];
  EXPECT_EQ(local_only.labels_size(), data::kNumChexpertLabels);
  EXPECT_TRUE(std::isfinite(local_only.mean_auc())) << local_only.DebugString();
  // Fine-tuned: not the base model's weights. (Here the run's one round started from the same base model with the
  // same settings, so the round's fine-tuned model may well be the same model.)
  EXPECT_NE(local_only.digest(), models["open-source"]->digest());
  std::set<std::pair<std::string, std::string>> comparisons;
  for (const v1::ModelComparison& c : final_report.comparisons()) {
    comparisons.insert({c.model_a(), c.model_b()});
    EXPECT_EQ(c.delong_p_size(), data::kNumChexpertLabels);
  }
  EXPECT_TRUE(comparisons.count({"open-source", "local-only"}));
  EXPECT_TRUE(comparisons.count({"local-only", "global"}));
  EXPECT_TRUE(comparisons.count({"local-only", "adapted"}));
  ExpectSummaryOnly(final_report);
  const fs::path reports = fs::path(tmp.Join("work")) / "reports" / "run-1";
  EXPECT_TRUE(fs::exists(reports / "local-only-vs-open-source" / "report.html"));
  EXPECT_TRUE(fs::exists(reports / "adapted-vs-local-only" / "report.html"));

  // One keyed directory; the next run from the same base model and settings reuses its model.
  const fs::path local_dir = fs::path(tmp.Join("work")) / "local-only";
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(local_dir)) dirs.push_back(entry.path());
  ASSERT_EQ(dirs.size(), 1u);
  const auto written = fs::last_write_time(dirs[0] / "model.ckpt");
  v1::Task again = evaluate;
  again.set_run_id("run-2");
  const absl::Status second = (*agent)->RunTask(again);
  ASSERT_TRUE(second.ok()) << second;
  EXPECT_EQ(fs::last_write_time(dirs[0] / "model.ckpt"), written);
  ASSERT_EQ(coordinator.service().reports().size(), 3u);
  const v1::MetricsReport second_report = coordinator.service().reports()[2];
  for (const v1::ModelEvaluation& m : second_report.models()) {
    if (m.name() == "local-only") {
      EXPECT_EQ(m.digest(), local_only.digest());
    }
  }
  // More epochs: another model in another directory.
  EXPECT_NE(LocalOnlyConfig(setup.config, "x.ckpt", setup.digest, evaluate.plan())->out_dir(), [&] {
    v1::TrainingPlan plan = evaluate.plan();
    plan.set_local_only_epochs(2);
    return LocalOnlyConfig(setup.config, "x.ckpt", setup.digest, plan)->out_dir();
  }());
  v1::TrainingPlan bad = evaluate.plan();
  bad.set_local_only_epochs(0);
  EXPECT_EQ(LocalOnlyConfig(setup.config, "x.ckpt", setup.digest, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FederatedAgentTest, CancelledByAHeartbeatStopsTheTaskAndEndsTheRun) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  setup.coordinator.service().AddTask(setup.train);
  setup.coordinator.service().CancelHeartbeats(true);  // "run aborted": cancel with run_ended.
  auto agent = FederatedAgent::Create(setup.config, setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status run = (*agent)->Run();  // exit_after_runs 1: the ended run lets it return.
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ((*agent)->finished_runs(), 1);
  EXPECT_EQ(setup.coordinator.service().calls("UploadUpdate"), 0);
  EXPECT_TRUE(setup.coordinator.service().reports().empty());
  auto db = AgentDatabase::Open(tmp.Join("work/site.db"));
  ASSERT_TRUE(db.ok()) << db.status();
  auto record = (*db)->FindTask({"run-1", 1, 1, "train"});
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->state, "cancelled");
}

TEST(FederatedAgentTest, ACertificateFromAnotherCaIsRefusedAndTheRunCommandExitsDenied) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  // The same site name, signed by another consortium's CA: TLS lets it through, the coordinator refuses it.
  auto other_ca = pki::testing::MakeCa(tmp.Join("other-ca"), "Other");
  ASSERT_NE(other_ca, nullptr);
  pki::testing::Credentials foreign = pki::testing::Enroll(*other_ca, "site-a", pki::Role::kSite);
  std::string text =
      absl::StrCat("site_id: \"site-a\" coordinator: \"", setup.coordinator.address(), "\" site_cert: \"",
                   tmp.WriteFile("foreign.pem", foreign.cert_pem), "\" site_key: \"",
                   tmp.WriteFile("foreign.key", foreign.key_pem), "\" ca_cert: \"", setup.coordinator.site_tls().ca,
                   "\" work_dir: \"work2\" min_backoff_ms: 1 max_backoff_ms: 5 "
                   "finetune { manifest: \"data/manifest.csv\" device: \"cpu\" }");
  const std::string config_path = tmp.WriteFile("foreign.textproto", text);
  const cli::Command command = MakeRunCommand();
  auto flags = cli::ParseFlags({"--config", config_path}, command.flags, command.max_positional);
  ASSERT_TRUE(flags.ok()) << flags.status();
  const absl::Status status = command.run(*flags);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("coordinator " + setup.coordinator.address()));
  EXPECT_EQ(cli::ExitCodeFor(status), cli::kExitDenied);
  EXPECT_EQ(setup.coordinator.service().calls("GetTask"), 0);
}

TEST(FederatedAgentTest, RefusesACertificateOfAnotherSite) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-b");
  tmp.WriteFile("manifest.csv", "Path\n");
  const std::string config_text = absl::StrCat(
      "site_id: \"site-a\" coordinator: \"", coordinator.address(), "\" site_cert: \"", coordinator.site_tls().cert,
      "\" site_key: \"", coordinator.site_tls().key, "\" ca_cert: \"", coordinator.site_tls().ca,
      "\" work_dir: \"work\" finetune { manifest: \"manifest.csv\" device: \"cpu\" }");
  auto config = ParseAgentConfig(config_text, "site.textproto", tmp.path());
  ASSERT_TRUE(config.ok()) << config.status();
  auto agent = FederatedAgent::Create(*config);
  ASSERT_EQ(agent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(agent.status().message(), ::testing::HasSubstr("site-b"));
  EXPECT_THAT(agent.status().message(), ::testing::HasSubstr("site_id"));
}

// Plays the coordinator's secure aggregation phases for a roster of the agent (site-a, index 1) and three simulated
// peers built with common/secagg/session.h: site-b (2), site-c (3) and site-d (4), threshold 2. site-d drops after
// sharing its keys: U2 = all four, U3 = {site-a, site-b, site-c}. The peers' own masked inputs encode zeros.
class SecAggScript final : public testing::SecAggPlayer {
 public:
  SecAggScript(pki::CertificateAuthority& ca, const secagg::SessionId& session, int64_t vector_length, double range)
      : session_(session), vector_length_(vector_length), range_(range) {
    peers_.push_back(std::make_unique<testing::SimulatedPeer>(ca, "site-b", 2, 10));
    peers_.push_back(std::make_unique<testing::SimulatedPeer>(ca, "site-c", 3, 100));  // The largest: the divisor.
    peers_.push_back(std::make_unique<testing::SimulatedPeer>(ca, "site-d", 4, 20));
    for (const auto& peer : peers_) {
      auto secrets = secagg::MakeSiteSecrets(peer->index, *peer->mask, 2, 4);
      EXPECT_TRUE(secrets.ok()) << secrets.status();
      secrets_[peer->index] = *std::move(secrets);
    }
  }

  // --- What the test changes.
  // The unmask request's lists (default: survivors a, b, c; dropped d).
  void SetUnmaskRequest(std::vector<std::string> survivors, std::vector<std::string> dropped) {
    absl::MutexLock lock(&mu_);
    survivors_ = std::move(survivors);
    dropped_ = std::move(dropped);
  }
  // The inbox answers PERMISSION_DENIED (this site's shares came too late: it is not in U2).
  void DenyInbox() {
    absl::MutexLock lock(&mu_);
    deny_inbox_ = true;
  }
  // AdvertiseKeys answers ALREADY_EXISTS, as the coordinator does when this site advertised other keys for the
  // attempt before (an earlier try of the task, or an agent before a restart).
  void KeysAlreadyAdvertised() {
    absl::MutexLock lock(&mu_);
    keys_exist_ = true;
  }
  // Replaces site-b's mask key in the roster after it was signed.
  void SubstituteAKey() {
    absl::MutexLock lock(&mu_);
    substitute_ = true;
  }

  // --- SecAggPlayer
  grpc::Status AdvertiseKeys(const std::string& caller, const std::string& certificate_pem,
                             const v1::SecAggKeys& keys) override {
    absl::MutexLock lock(&mu_);
    if (keys_exist_) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "site 'site-a' already advertised other keys");
    }
    EXPECT_EQ(caller, "site-a");
    agent_.set_site_id(caller);
    agent_.set_index(1);
    agent_.set_cipher_public_key(keys.cipher_public_key());
    agent_.set_mask_public_key(keys.mask_public_key());
    agent_.set_signature(keys.signature());
    agent_.set_certificate_pem(certificate_pem);
    agent_.set_num_samples(keys.num_samples());
    // The agent's signature verifies as the coordinator checks it.
    auto cert = pki::ParseCertificatePem(certificate_pem);
    EXPECT_TRUE(cert.ok());
    pki::EvpPkeyPtr key(X509_get_pubkey(cert->get()));
    const absl::Status verified = secagg::VerifyPeerKeys(key.get(), session_, agent_);
    EXPECT_TRUE(verified.ok()) << verified;
    advertised_ = true;
    return grpc::Status::OK;
  }
  grpc::Status GetRoster(const std::string&, const v1::SecAggPhaseRequest& request, v1::SecAggRoster* roster) override {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(request.attempt(), session_.attempt);
    if (!advertised_) return grpc::Status::OK;  // ready = false
    roster->set_ready(true);
    *roster->add_peers() = agent_;
    int64_t max_samples = agent_.num_samples();
    for (const auto& peer : peers_) {
      *roster->add_peers() = peer->Entry(session_);
      max_samples = std::max(max_samples, peer->num_samples);
    }
    if (substitute_) {
      auto other = secagg::KeyPair::Generate();
      roster->mutable_peers(1)->set_mask_public_key(testing::AsString(other->public_key()));
    }
    roster->set_threshold(2);
    roster->set_range(range_);
    roster->set_vector_length(vector_length_);
    roster->set_max_num_samples(max_samples);
    max_num_samples_ = max_samples;
    return grpc::Status::OK;
  }
  grpc::Status ShareKeys(const std::string&, const v1::SecAggShareUpload& upload) override {
    absl::MutexLock lock(&mu_);
    for (const v1::SecAggEncryptedShares& shares : upload.shares()) shares_from_agent_[shares.site_id()] = shares;
    return grpc::Status::OK;
  }
  grpc::Status GetInbox(const std::string&, const v1::SecAggPhaseRequest&, v1::SecAggInbox* inbox) override {
    absl::MutexLock lock(&mu_);
    if (deny_inbox_) return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "site-a is not in U2");
    inbox->set_ready(true);
    inbox->add_participants("site-a");
    for (const auto& peer : peers_) {
      inbox->add_participants(peer->site_id);
      auto ciphertext = secagg::EncryptShares(*peer->cipher, testing::AsBytes(agent_.cipher_public_key()), session_,
                                              peer->index, 1, secrets_.at(peer->index).payloads.at(1));
      EXPECT_TRUE(ciphertext.ok()) << ciphertext.status();
      v1::SecAggEncryptedShares* shares = inbox->add_shares();
      shares->set_site_id(peer->site_id);
      shares->set_ciphertext(*ciphertext);
    }
    return grpc::Status::OK;
  }
  grpc::Status GetUnmaskRequest(const std::string&, const v1::SecAggPhaseRequest&,
                                v1::SecAggUnmaskRequest* unmask) override {
    absl::MutexLock lock(&mu_);
    unmask->set_ready(true);
    for (const std::string& s : survivors_) unmask->add_survivors(s);
    for (const std::string& d : dropped_) unmask->add_dropped(d);
    return grpc::Status::OK;
  }
  grpc::Status RevealShares(const std::string&, const v1::SecAggReveal& reveal) override {
    absl::MutexLock lock(&mu_);
    reveals_.push_back(reveal);
    return grpc::Status::OK;
  }

  // --- The coordinator's recovery, for the test: the sum of U3's inputs from the agent's masked upload, the peers'
  // masked zeros and the revealed shares (the agent's and the surviving peers').
  absl::StatusOr<std::vector<double>> RecoverAgentInput(const std::vector<uint32_t>& agent_masked) {
    absl::MutexLock lock(&mu_);
    if (reveals_.size() != 1) return absl::FailedPreconditionError("expected one reveal");
    const v1::SecAggReveal& reveal = reveals_[0];
    std::map<int, std::vector<uint8_t>> mask_keys = {{1, testing::AsBytes(agent_.mask_public_key())}};
    for (const auto& peer : peers_) mask_keys[peer->index] = peer->mask->public_key();
    std::vector<uint32_t> sum = agent_masked;
    ASSIGN_OR_RETURN(const secagg::FixedPointCodec codec, secagg::FixedPointCodec::Create(range_, 4));
    const std::vector<float> zeros(agent_masked.size(), 0.0f);
    ASSIGN_OR_RETURN(const std::vector<uint32_t> zero_encoded, codec.Encode(zeros));
    for (int index : {2, 3}) {
      const testing::SimulatedPeer& peer = *peers_[index - 2];
      ASSIGN_OR_RETURN(
          const std::vector<uint32_t> masked,
          secagg::MaskForPeers(index, zero_encoded, secrets_.at(index).self_seed, *peer.mask, mask_keys, session_));
      secagg::AddInto(sum, masked);
    }
    secagg::RevealedShares revealed;
    // The agent's self seed: the shares it sent site-b and site-c, as they decrypt them (and its own, revealed).
    for (int index : {2, 3}) {
      const testing::SimulatedPeer& peer = *peers_[index - 2];
      ASSIGN_OR_RETURN(const secagg::SharePayload payload,
                       secagg::DecryptShares(*peer.cipher, testing::AsBytes(agent_.cipher_public_key()), session_, 1,
                                             index, shares_from_agent_.at(peer.site_id).ciphertext()));
      revealed.self_shares[1].push_back(payload.self_mask);
    }
    // The agent's reveal, read as the coordinator reads it.
    for (const v1::SecAggRevealedShare& share : reveal.self_mask_shares()) {
      ASSIGN_OR_RETURN(const secagg::Share parsed, secagg::ParseSelfMaskReveal(share));
      const int owner = share.site_id() == "site-a" ? 1 : share.site_id() == "site-b" ? 2 : 3;
      revealed.self_shares[owner].push_back(parsed);
    }
    for (const v1::SecAggRevealedShare& share : reveal.mask_key_shares()) {
      ASSIGN_OR_RETURN(const auto parsed, secagg::ParseMaskKeyReveal(share));
      revealed.key_shares[4].push_back(parsed);
    }
    // site-b's and site-c's reveals of each other's seed and of site-d's key.
    revealed.self_shares[2].push_back(secrets_.at(2).payloads.at(3).self_mask);
    revealed.self_shares[3].push_back(secrets_.at(3).payloads.at(2).self_mask);
    revealed.key_shares[4].push_back(secrets_.at(4).payloads.at(2).mask_key);
    ASSIGN_OR_RETURN(const std::vector<uint32_t> recovered,
                     secagg::RecoverSum(sum, mask_keys, {1, 2, 3}, {4}, revealed, 2, session_));
    return codec.DecodeSum(recovered);
  }

  std::vector<v1::SecAggReveal> reveals() const {
    absl::MutexLock lock(&mu_);
    return reveals_;
  }
  int64_t max_num_samples() const {
    absl::MutexLock lock(&mu_);
    return max_num_samples_;
  }
  int64_t agent_num_samples() const {
    absl::MutexLock lock(&mu_);
    return agent_.num_samples();
  }

 private:
  const secagg::SessionId session_;
  const int64_t vector_length_;
  const double range_;
  std::vector<std::unique_ptr<testing::SimulatedPeer>> peers_;
  std::map<int, secagg::SiteSecrets> secrets_;
  mutable absl::Mutex mu_;
  bool advertised_ ABSL_GUARDED_BY(mu_) = false;
  bool keys_exist_ ABSL_GUARDED_BY(mu_) = false;
  bool substitute_ ABSL_GUARDED_BY(mu_) = false;
  bool deny_inbox_ ABSL_GUARDED_BY(mu_) = false;
  v1::SecAggPeer agent_ ABSL_GUARDED_BY(mu_);
  int64_t max_num_samples_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, v1::SecAggEncryptedShares> shares_from_agent_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> survivors_ ABSL_GUARDED_BY(mu_) = {"site-a", "site-b", "site-c"};
  std::vector<std::string> dropped_ ABSL_GUARDED_BY(mu_) = {"site-d"};
  std::vector<v1::SecAggReveal> reveals_ ABSL_GUARDED_BY(mu_);
};

// The TRAIN task of AgentSetup with secure aggregation (fp32, range 10) and its script.
struct SecAggSetup {
  explicit SecAggSetup(const fedtune::testing::TempDir& tmp) : setup(tmp) {
    task = setup.train;
    task.mutable_plan()->set_encoding("fp32");
    task.mutable_plan()->set_secure_aggregation(true);
    task.mutable_plan()->set_secagg_range(10.0);
    auto global = model::LoadCheckpoint(setup.model_path);
    EXPECT_TRUE(global.ok()) << global.status();
    global_tensors = fl::CheckpointTensors(*global);
    auto made = secagg::MakeLayout(global_tensors);
    EXPECT_TRUE(made.ok()) << made.status();
    layout = *made;
    script = std::make_unique<SecAggScript>(
        setup.coordinator.ca(), secagg::SessionId{task.run_id(), task.round(), task.attempt()}, layout.length, 10.0);
    setup.coordinator.service().SetSecAggPlayer(script.get());
  }
  ~SecAggSetup() { setup.coordinator.service().SetSecAggPlayer(nullptr); }

  AgentSetup setup;
  v1::Task task;
  fl::TensorMap global_tensors;
  secagg::Layout layout;
  std::unique_ptr<SecAggScript> script;
};

// Secure aggregation end to end at the site: the agent joins the session, trains, uploads a masked vector (nothing
// of its delta readable in it) and reveals exactly the shares of U3 and of the dropped site; the coordinator's
// recovery then gives the agent's true pre-scaled delta within the fixed-point bound.
TEST(FederatedAgentTest, SecureAggregationMasksTheUpdateAndRevealsOneShareKindPerPeer) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  testing::FakeCoordinator& coordinator = sa.setup.coordinator;
  {
    auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status status = (*agent)->RunTask(sa.task);
    ASSERT_TRUE(status.ok()) << status;
  }
  EXPECT_EQ(coordinator.service().calls("SecAggAdvertiseKeys"), 1);
  EXPECT_EQ(coordinator.service().calls("SecAggShareKeys"), 1);
  EXPECT_EQ(coordinator.service().calls("SecAggRevealShares"), 1);

  // The upload: one MASKED_UINT32 tensor of the layout's length.
  const std::string upload = coordinator.service().accepted_upload("run-1", 1);
  ASSERT_FALSE(upload.empty());
  auto bundle = fl::ParseTensorBundle(upload);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  auto masked = secagg::ReadMaskedBundle(*bundle, sa.layout.length);
  ASSERT_TRUE(masked.ok()) << masked.status();
  EXPECT_EQ(coordinator.service().last_upload_header().num_samples(), sa.script->agent_num_samples());
  EXPECT_GT(sa.script->agent_num_samples(), 20);

  // Reveals: self-mask shares of the survivors (its own too), mask-key shares of site-d; recorded first.
  const std::vector<v1::SecAggReveal> reveals = sa.script->reveals();
  ASSERT_EQ(reveals.size(), 1u);
  std::set<std::string> self_mask, mask_key;
  for (const auto& share : reveals[0].self_mask_shares()) {
    self_mask.insert(share.site_id());
    EXPECT_EQ(share.x(), 1);
  }
  for (const auto& share : reveals[0].mask_key_shares()) mask_key.insert(share.site_id());
  EXPECT_EQ(self_mask, (std::set<std::string>{"site-a", "site-b", "site-c"}));
  EXPECT_EQ(mask_key, (std::set<std::string>{"site-d"}));
  const fs::path round_dir = fs::path(tmp.Join("work")) / "runs" / "run-1" / "round-1-1";
  auto record = ReadRevealRecord((round_dir / "reveals.txt").string());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->size(), 4u);

  // Unmasked: the agent's delta (its adapted model = this round's fine-tuned model) x num_samples / max_num_samples.
  auto recovered = sa.script->RecoverAgentInput(*masked);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  auto tuned = model::LoadCheckpoint(tmp.Join("work/adapted/run-1/model.ckpt"));
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  auto delta = fl::ComputeDelta(fl::CheckpointTensors(*tuned), sa.global_tensors);
  ASSERT_TRUE(delta.ok()) << delta.status();
  const double scale = static_cast<double>(sa.script->agent_num_samples()) / sa.script->max_num_samples();
  EXPECT_LT(scale, 1.0);
  auto expected = secagg::Flatten(*delta, sa.layout, scale);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_EQ(recovered->size(), expected->size());
  auto codec = secagg::FixedPointCodec::Create(10.0, 4);
  ASSERT_TRUE(codec.ok());
  double largest_error = 0, norm = 0;
  for (size_t i = 0; i < expected->size(); ++i) {
    largest_error = std::max(largest_error, std::fabs((*recovered)[i] - (*expected)[i]));
    norm += (*expected)[i] * (*expected)[i];
  }
  EXPECT_GT(norm, 0);  // Training moved the weights.
  EXPECT_LE(largest_error, codec->SumErrorBound() + 1e-6);
  // Masked, the vector says nothing of the delta: it is nowhere near the plain encoding.
  auto plain = codec->Encode(std::vector<float>(expected->begin(), expected->end()));
  ASSERT_TRUE(plain.ok());
  size_t equal = 0;
  for (size_t i = 0; i < plain->size(); ++i) equal += (*plain)[i] == (*masked)[i];
  EXPECT_LT(equal, plain->size() / 100 + 1);

  ASSERT_EQ(coordinator.service().reports().size(), 1u);
  EXPECT_EQ(coordinator.service().reports()[0].kind(), "round");

  // A restarted agent offered the same task again joins no new session (its secrets are gone): the recorded masked
  // update was accepted, so it only completes the round.
  const int streams = coordinator.service().calls("UploadUpdate");
  {
    auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    const absl::Status again = (*agent)->RunTask(sa.task);
    ASSERT_TRUE(again.ok()) << again;
  }
  EXPECT_EQ(coordinator.service().calls("SecAggAdvertiseKeys"), 1);
  EXPECT_EQ(coordinator.service().calls("SecAggRevealShares"), 1);
  EXPECT_EQ(coordinator.service().calls("UploadUpdate"), streams);
  EXPECT_EQ(coordinator.service().accepted_upload("run-1", 1), upload);
  EXPECT_EQ(coordinator.service().reports().size(), 2u);
}

// An unverifiable roster (a peer's key substituted after it signed) ends the session before anything secret leaves
// the site: no shares, no training, no upload.
TEST(FederatedAgentTest, SecureAggregationRefusesASubstitutedKeyBeforeSharing) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  sa.script->SubstituteAKey();
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(sa.task);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("site-b"));
  EXPECT_EQ(sa.setup.coordinator.service().calls("SecAggShareKeys"), 0);
  EXPECT_EQ(sa.setup.coordinator.service().calls("UploadUpdate"), 0);
  EXPECT_FALSE(fs::exists(tmp.Join("work/runs/run-1/round-1-1/update.bin")));
}

// Keys of this attempt advertised before and lost (a failed try, a restart): the site cannot take part in the session,
// so it declines the attempt (the coordinator then counts it as dropped) instead of failing it again and again;
// nothing is trained or uploaded.
TEST(FederatedAgentTest, SecureAggregationDeclinesAnAttemptWhoseKeysWereLost) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  sa.script->KeysAlreadyAdvertised();
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(sa.task);
  EXPECT_TRUE(status.ok()) << status;
  const std::vector<v1::DeclineRequest> declines = sa.setup.coordinator.service().declines();
  ASSERT_EQ(declines.size(), 1u);
  EXPECT_THAT(declines[0].reason(), ::testing::HasSubstr("keys"));
  EXPECT_EQ(sa.setup.coordinator.service().calls("SecAggShareKeys"), 0);
  EXPECT_EQ(sa.setup.coordinator.service().calls("UploadUpdate"), 0);
}

// A coordinator that asks for both shares of a live peer gets neither: the reveal is refused (FailedPrecondition,
// naming the peer) after the upload, and nothing is recorded as revealed.
TEST(FederatedAgentTest, SecureAggregationRefusesToRevealBothSharesOfAPeer) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  sa.script->SetUnmaskRequest({"site-a", "site-b", "site-c"}, {"site-c", "site-d"});
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(sa.task);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("site-c"));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("protocol violation"));
  EXPECT_EQ(sa.setup.coordinator.service().calls("UploadUpdate"), 1);
  EXPECT_EQ(sa.setup.coordinator.service().calls("SecAggRevealShares"), 0);
  EXPECT_FALSE(fs::exists(tmp.Join("work/runs/run-1/round-1-1/reveals.txt")));
}

// A site the coordinator left out of a phase (PERMISSION_DENIED on the inbox) fails the task with
// FAILED_PRECONDITION: the agent's loop goes on (it stops only on its own refusal of a roster, or a revoked site).
TEST(FederatedAgentTest, SecureAggregationLeftOutOfAPhaseFailsTheTaskOnly) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  sa.script->DenyInbox();
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(sa.task);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("not in U2"));
  EXPECT_EQ(sa.setup.coordinator.service().calls("UploadUpdate"), 0);
}

// DP-FedAvg without secure aggregation: the site clips its delta's norm; the coordinator adds the noise.
TEST(FederatedAgentTest, DpFedAvgClipsTheUploadedDelta) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  v1::Task task = setup.train;
  task.mutable_plan()->set_encoding("fp32");
  task.mutable_plan()->set_dp("dp-fedavg");
  task.mutable_plan()->set_dp_clip_norm(0.01);
  task.mutable_plan()->set_dp_noise_multiplier(1.0);
  auto agent = FederatedAgent::Create(setup.config, setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(task);
  ASSERT_TRUE(status.ok()) << status;
  auto global = model::LoadCheckpoint(setup.model_path);
  ASSERT_TRUE(global.ok());
  const fl::TensorMap global_tensors = fl::CheckpointTensors(*global);
  auto bundle = fl::ParseTensorBundle(setup.coordinator.service().accepted_upload("run-1", 1));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  auto delta = fl::DecodeTensors(*bundle, &global_tensors);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_LE(fl::L2Norm(*delta), 0.01 * (1 + 1e-5));
  EXPECT_GT(fl::L2Norm(*delta), 0.005);  // One epoch moves the weights far more than 0.01: clipped, not zeroed.
}

TEST(FederatedAgentTest, SecureAggregationRefusesLossyEncodingsAndFedBn) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  v1::Task int8 = sa.task;
  int8.mutable_plan()->set_encoding("int8");
  const absl::Status lossy = (*agent)->RunTask(int8);
  EXPECT_EQ(lossy.code(), absl::StatusCode::kInvalidArgument) << lossy;
  EXPECT_THAT(lossy.message(), ::testing::HasSubstr("fp32"));
  v1::Task fedbn = sa.task;
  fedbn.set_attempt(2);
  fedbn.mutable_plan()->set_personalization(v1::PERSONALIZATION_FEDBN);
  const absl::Status bn = (*agent)->RunTask(fedbn);
  EXPECT_EQ(bn.code(), absl::StatusCode::kInvalidArgument) << bn;
  EXPECT_EQ(sa.setup.coordinator.service().calls("SecAggAdvertiseKeys"), 0);
}

// The exact budget check (with the model's networks: DITTO's personal copy doubles them) comes before the site joins
// the secure aggregation session: a round declined then has sent no keys.
TEST(FederatedAgentTest, ChecksTheBudgetBeforeJoiningSecureAggregation) {
  fedtune::testing::TempDir tmp;
  SecAggSetup sa(tmp);
  testing::FakeCoordinator& coordinator = sa.setup.coordinator;
  constexpr double kSigma = 1.5;
  auto site = train::LoadSiteData(sa.setup.config.finetune());
  ASSERT_TRUE(site.ok()) << site.status();
  auto plan = privacy::PlanDpSgd(static_cast<int64_t>(site->split.EntriesIn(data::Split::kTrain).size()), 16, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  privacy::RdpAccountant one;
  ASSERT_TRUE(one.AddSteps(plan->sample_rate, kSigma, plan->max_steps).ok());
  privacy::RdpAccountant two;
  ASSERT_TRUE(two.AddSteps(plan->sample_rate, kSigma, 2 * plan->max_steps).ok());
  // One network (the check before the download) fits; the model's two (DITTO) do not.
  sa.setup.config.set_max_epsilon((one.GetPrivacySpent(1e-5)->epsilon + two.GetPrivacySpent(1e-5)->epsilon) / 2);
  v1::Task task = sa.task;
  task.mutable_plan()->set_dp("dp-sgd");
  task.mutable_plan()->set_dp_noise_multiplier(kSigma);
  task.mutable_plan()->set_dp_clip_norm(1.0);
  task.mutable_plan()->set_personalization(v1::PERSONALIZATION_DITTO);
  task.mutable_plan()->set_ditto_lambda(0.1);
  auto agent = FederatedAgent::Create(sa.setup.config, sa.setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(task);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(coordinator.service().download_offsets().size(), 1u);  // Past the first check: the model was loaded.
  ASSERT_EQ(coordinator.service().declines().size(), 1u);
  EXPECT_THAT(coordinator.service().declines()[0].reason(), ::testing::HasSubstr("2 network(s)"));
  EXPECT_EQ(coordinator.service().calls("SecAggAdvertiseKeys"), 0);
  EXPECT_EQ(coordinator.service().calls("SecAggShareKeys"), 0);
}

// A DP-SGD round on a model with a DuoNet: the ledger holds what the trainer ran, each SoloNet member at
// batch / training images and the DuoNet at batch / training study pairs, the count the budget's check before
// training uses (DuoTrainingPairs); composed exactly.
TEST(FederatedAgentTest, DpSgdAccountsTheDuoNetAtTheStudyPairRate) {
  fedtune::testing::TempDir tmp;
  AgentSetup setup(tmp);
  auto init = InitCheckpoint({"densenet_tiny"}, 32, 0.2, 0, {"densenet_tiny"});
  ASSERT_TRUE(init.ok()) << init.status();
  const std::string duo_path = tmp.Join("duo.ckpt");
  ASSERT_TRUE(model::SaveCheckpoint(&*init, duo_path).ok());
  const std::string duo_bytes = *io::ReadFile(duo_path);
  setup.coordinator.service().AddModel(duo_bytes);
  v1::Task task = setup.train;
  task.set_model_digest(io::Sha256Hex(duo_bytes));
  task.set_model_bytes(static_cast<int64_t>(duo_bytes.size()));
  task.mutable_plan()->set_encoding("fp32");
  task.mutable_plan()->set_dp("dp-sgd");
  task.mutable_plan()->set_dp_noise_multiplier(1.2);
  task.mutable_plan()->set_dp_clip_norm(1.0);
  auto site = train::LoadSiteData(setup.config.finetune());
  ASSERT_TRUE(site.ok()) << site.status();
  const int64_t images = static_cast<int64_t>(site->split.EntriesIn(data::Split::kTrain).size());
  const int64_t pairs = DuoTrainingPairs(*site);
  ASSERT_GT(pairs, 0);
  ASSERT_LT(pairs, images);
  auto agent = FederatedAgent::Create(setup.config, setup.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status status = (*agent)->RunTask(task);
  ASSERT_TRUE(status.ok()) << status;

  auto db = AgentDatabase::Open((fs::path(tmp.Join("work")) / "site.db").string());
  ASSERT_TRUE(db.ok()) << db.status();
  auto ledger = (*db)->PrivacyLedger();
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  ASSERT_EQ(ledger->size(), 1u);
  auto members = privacy::PlanDpSgd(images, 16, 1);
  auto duo = privacy::PlanDpSgd(pairs, 16, 1);
  ASSERT_TRUE(members.ok() && duo.ok());
  EXPECT_EQ((*ledger)[0].phases,
            absl::StrCat("actual\nmember0 ", absl::StrFormat("%.17g %.17g", members->sample_rate, 1.2), " ",
                         members->max_steps, "\nduonet ", absl::StrFormat("%.17g %.17g", duo->sample_rate, 1.2), " ",
                         duo->max_steps));
  privacy::RdpAccountant exact;
  ASSERT_TRUE(exact.AddSteps(members->sample_rate, 1.2, members->max_steps).ok());
  ASSERT_TRUE(exact.AddSteps(duo->sample_rate, 1.2, duo->max_steps).ok());
  const double expected = exact.GetPrivacySpent(1e-5)->epsilon;
  const v1::MetricsReport report = setup.coordinator.service().reports().at(0);
  EXPECT_NEAR(report.privacy().epsilon(), expected, 1e-9 * expected);
  EXPECT_EQ(report.privacy().private_steps(), members->max_steps + duo->max_steps);
}

}  // namespace
}  // namespace fedtune::agent
