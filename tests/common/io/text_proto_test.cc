#include "common/io/text_proto.h"

#include "fedtune/v1/finetune.pb.h"
#include "gtest/gtest.h"

namespace fedtune::io {
namespace {

TEST(TextProtoTest, ParsesAndNamesTheFirstErrorWithItsPosition) {
  v1::FinetuneConfig config;
  ASSERT_TRUE(ParseTextProto("batch_size: 8\nsplit { train: 0.5 }", "a.textproto", &config).ok());
  EXPECT_EQ(config.batch_size(), 8);
  EXPECT_EQ(config.split().train(), 0.5);

  absl::Status unknown = ParseTextProto("batch_size: 8\n  bogus: 1\n", "a.textproto", &config);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.message().substr(0, 14), "a.textproto:2:") << unknown;
  EXPECT_NE(unknown.message().find("bogus"), absl::string_view::npos) << unknown;
  // The message is cleared first: nothing is left from an earlier parse.
  ASSERT_TRUE(ParseTextProto("max_epochs: 3", "c.textproto", &config).ok());
  EXPECT_FALSE(config.has_batch_size());
  EXPECT_EQ(config.max_epochs(), 3);

  absl::Status bad_value = ParseTextProto("batch_size: \"many\"", "b.textproto", &config);
  EXPECT_EQ(bad_value.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_value.message().substr(0, 14), "b.textproto:1:") << bad_value;
}

TEST(TextProtoTest, ResolvesConfigPathsAgainstTheConfigDirectory) {
  EXPECT_EQ(ResolveConfigPath("/etc/fedtune", "pki/site.pem"), "/etc/fedtune/pki/site.pem");
  EXPECT_EQ(ResolveConfigPath("/etc/fedtune", "../data/m.csv"), "/etc/data/m.csv");
  EXPECT_EQ(ResolveConfigPath("/etc/fedtune", "/abs/x"), "/abs/x");
  EXPECT_EQ(ResolveConfigPath("/etc/fedtune", ""), "");
  EXPECT_EQ(ResolveConfigPath("", "rel/x"), "rel/x");
}

}  // namespace
}  // namespace fedtune::io
