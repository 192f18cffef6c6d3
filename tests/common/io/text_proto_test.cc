#include "common/io/text_proto.h"

#include <google/protobuf/struct.pb.h>
#include <sys/stat.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "fedtune/v1/finetune.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::io {
namespace {

using ::testing::HasSubstr;

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

TEST(TextProtoTest, OversizedTextIsRefusedUnparsed) {
  // 2 MiB of comments: valid text format, but no config is that long.
  std::string text;
  while (text.size() < (2u << 20)) text += "# padding padding padding padding padding padding padding\n";
  text += "batch_size: 8\n";
  v1::FinetuneConfig config;
  absl::Status status = ParseTextProto(text, "big.textproto", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("big.textproto: "));
  EXPECT_THAT(std::string(status.message()), HasSubstr("above the limit of 1048576 bytes"));
  EXPECT_FALSE(config.has_batch_size());
}

TEST(TextProtoTest, ErrorsQuoteAShortPrefixOfTheOffendingText) {
  v1::FinetuneConfig config;
  absl::Status status =
      ParseTextProto(absl::StrCat("batch_size: \"", std::string(100000, 'x'), "\""), "a.textproto", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("a.textproto:1:"));
  EXPECT_LT(status.message().size(), 400u);
}

TEST(TextProtoTest, NestingIsLimited) {
  // fedtune's configs cannot nest deeper than their schemas (three levels), but
  // the parser recurses once per level whatever the message: a recursive type
  // (google.protobuf.Struct: Struct > map entry > Value > Struct ...) shows the
  // limit, kMaxTextProtoNesting levels.
  auto nested = [](int structs) {
    std::string text;
    for (int i = 0; i < structs; ++i) text += "fields { key: \"a\" value { struct_value { ";
    for (int i = 0; i < structs; ++i) text += "} } } ";
    return text;
  };
  google::protobuf::Struct message;
  EXPECT_TRUE(ParseTextProto(nested(5), "ok.textproto", &message).ok());
  absl::Status deep = ParseTextProto(nested(20), "deep.textproto", &message);
  EXPECT_EQ(deep.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(deep.message()), HasSubstr("deep.textproto:1:"));
}

TEST(TextProtoTest, ReadTextProtoFileRefusesWhatIsNotAConfigFile) {
  testing::TempDir dir;
  EXPECT_EQ(ReadTextProtoFile(dir.Join("none.textproto")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadTextProtoFile(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::string> ok = ReadTextProtoFile(dir.WriteFile("ok.textproto", "batch_size: 8\n"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "batch_size: 8\n");
  const std::string big = dir.WriteFile("big.textproto", std::string((1 << 20) + 1, '#'));
  absl::StatusOr<std::string> refused = ReadTextProtoFile(big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(big + ": file of 1048577 bytes, above the limit"));
  const std::string fifo = dir.Join("fifo.textproto");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, std::string("/dev/zero")}) {
    absl::StatusOr<std::string> device = ReadTextProtoFile(path);
    EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(std::string(device.status().message()), HasSubstr(path + ": not a regular file"));
  }
}

}  // namespace
}  // namespace fedtune::io
