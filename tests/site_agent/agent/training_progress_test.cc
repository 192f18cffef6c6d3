#include "site_agent/agent/training_progress.h"

#include <vector>

#include "gtest/gtest.h"

namespace fedtune::agent {
namespace {

train::EpochRecord Epoch(int64_t epoch, double train_loss) {
  train::EpochRecord record;
  record.epoch = epoch;
  record.train_loss = train_loss;
  return record;
}

TEST(TrainingProgressTest, FollowsTheNetworksInTrainingOrder) {
  TrainingProgress progress(2, 3);
  EXPECT_EQ(progress.Describe().state, "training member 1/2, epoch 1/3");
  EXPECT_DOUBLE_EQ(progress.Describe().fraction, 0);
  ASSERT_TRUE(progress.OnEpoch("member0-densenet", Epoch(0, 0.75)).ok());
  TrainingProgress::View view = progress.Describe();
  EXPECT_EQ(view.state, "training member 1/2, epoch 2/3");
  EXPECT_DOUBLE_EQ(view.train_loss, 0.75);
  EXPECT_DOUBLE_EQ(view.fraction, 1.0 / 6);
  for (int e = 1; e < 3; ++e) ASSERT_TRUE(progress.OnEpoch("member0-densenet", Epoch(e, 0.5)).ok());
  // A network that completed all its epochs is finished: the next one is training.
  EXPECT_EQ(progress.Describe().state, "training member 2/2, epoch 1/3");
  // "duonet" sorts before "member0" by name and trains after it.
  ASSERT_TRUE(progress.OnEpoch("duonet", Epoch(0, 0.25)).ok());
  view = progress.Describe();
  EXPECT_EQ(view.state, "training member 2/2, epoch 2/3");
  EXPECT_DOUBLE_EQ(view.fraction, 4.0 / 6);
  EXPECT_DOUBLE_EQ(view.train_loss, 0.25);
}

TEST(TrainingProgressTest, CountsResumedEpochs) {
  TrainingProgress progress(2, 3);
  // A restarted fine-tuning: member 0 had finished (early stopping after 2 epochs), the DuoNet had done 1 epoch.
  ASSERT_TRUE(progress.OnResume("member0-densenet", {Epoch(0, 0.9), Epoch(1, 0.8)}).ok());
  ASSERT_TRUE(progress.OnResume("duonet", {Epoch(0, 0.6)}).ok());
  TrainingProgress::View view = progress.Describe();
  EXPECT_EQ(view.state, "training member 2/2, epoch 2/3");
  EXPECT_DOUBLE_EQ(view.fraction, 3.0 / 6);
  EXPECT_DOUBLE_EQ(view.train_loss, 0.6);
  ASSERT_TRUE(progress.OnEpoch("duonet", Epoch(1, 0.4)).ok());
  EXPECT_EQ(progress.Describe().state, "training member 2/2, epoch 3/3");
}

TEST(TrainingProgressTest, NeverReportsMoreThanEverything) {
  TrainingProgress progress(1, 2);
  for (int e = 0; e < 4; ++e) ASSERT_TRUE(progress.OnEpoch("member0", Epoch(e, 0.1)).ok());
  const TrainingProgress::View view = progress.Describe();
  EXPECT_EQ(view.state, "training member 1/1, epoch 2/2");
  EXPECT_DOUBLE_EQ(view.fraction, 1.0);
}

}  // namespace
}  // namespace fedtune::agent
