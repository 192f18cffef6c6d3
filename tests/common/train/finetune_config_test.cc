#include "common/train/finetune_config.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "common/imaging/decode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::train {
namespace {

using ::testing::HasSubstr;

constexpr char kMinimal[] = R"(base_model: "base.ckpt" manifest: "data/manifest.csv" out_dir: "out")";

TEST(FinetuneConfigTest, DefaultsAreTheStudysAndPathsAreResolved) {
  auto c = ParseFinetuneConfig(kMinimal, "site.textproto", "/etc/fedtune");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->base_model(), "/etc/fedtune/base.ckpt");
  EXPECT_EQ(c->manifest(), "/etc/fedtune/data/manifest.csv");
  EXPECT_EQ(c->data_root(), "/etc/fedtune/data");
  EXPECT_EQ(c->cache_dir(), "/etc/fedtune/out/cache");
  EXPECT_EQ(c->batch_size(), 88);
  EXPECT_DOUBLE_EQ(c->learning_rate(), 0.001);
  EXPECT_EQ(c->patience(), 10);
  EXPECT_FALSE(c->has_dropout());
  EXPECT_EQ(c->labels().uncertain(), "u-soft");
  EXPECT_DOUBLE_EQ(c->labels().soft_low(), 0.55);
  EXPECT_DOUBLE_EQ(c->labels().soft_high(), 0.85);
  EXPECT_TRUE(c->labels().hierarchy());
  EXPECT_EQ(c->device(), "auto");
  EXPECT_TRUE(c->augment());
  EXPECT_EQ(c->max_image_pixels(), 67108864);  // imaging::kDefaultMaxImagePixels.
  auto absolute =
      ParseFinetuneConfig(R"(base_model: "/m/b.ckpt" manifest: "/d/m.csv" out_dir: "/o" data_root: "/r")", "x", "/etc");
  ASSERT_TRUE(absolute.ok());
  EXPECT_EQ(absolute->data_root(), "/r");
  EXPECT_EQ(absolute->base_model(), "/m/b.ckpt");
}

TEST(FinetuneConfigTest, ErrorsNameTheLineOrField) {
  struct Case {
    std::string text;
    const char* expected;
  } cases[] = {
      {"base_model: \"b\"\nmanifest: \"m\"\nout_dir: ", "site.textproto:3:"},
      {std::string(kMinimal) + " colour: 3", "site.textproto:1:"},
      {std::string(kMinimal) + " momentum: 1.5", "config field 'momentum'"},
      {std::string(kMinimal) + " batch_size: 0", "config field 'batch_size'"},
      {std::string(kMinimal) + " on_image_error: \"maybe\"", "config field 'on_image_error'"},
      {std::string(kMinimal) + " split { method: \"magic\" }", "config field 'split.method'"},
      {std::string(kMinimal) + " split { validation: 0 }", "config field 'split'"},
      {std::string(kMinimal) + " labels { uncertain: \"u-maybe\" }", "config field 'labels.uncertain'"},
      {std::string(kMinimal) + " labels { soft_low: 0.9 soft_high: 0.2 }", "labels.soft_low/soft_high"},
      {std::string(kMinimal) + " dropout: 1.0", "config field 'dropout'"},
      {std::string(kMinimal) + " image_size: 4", "config field 'image_size'"},
      {std::string(kMinimal) + " max_image_pixels: 0", "config field 'max_image_pixels': must be in [1, 1073741824]"},
      {std::string(kMinimal) + " max_image_pixels: 1073741825", "config field 'max_image_pixels'"},
      {std::string(kMinimal) + " raster_bits_stored: 7", "config field 'raster_bits_stored'"},
      {std::string(kMinimal) + " raster_bits_stored: 17", "config field 'raster_bits_stored'"},
      {std::string(kMinimal) + " raster_bits_stored: -2", "config field 'raster_bits_stored'"},
      {R"(manifest: "m" out_dir: "o")", "config field 'base_model'"},
      {std::string(kMinimal) + " dp_noise_multiplier: 0.05", "config field 'dp_noise_multiplier'"},
      {std::string(kMinimal) + " dp_noise_multiplier: -1", "config field 'dp_noise_multiplier'"},
      {std::string(kMinimal) + " dp_noise_multiplier: 20000", "config field 'dp_noise_multiplier'"},
      {std::string(kMinimal) + " dp_noise_multiplier: nan", "config field 'dp_noise_multiplier'"},
      {std::string(kMinimal) + " dp_noise_multiplier: inf", "config field 'dp_noise_multiplier'"},
      {std::string(kMinimal) + " dp_clip_norm: 0", "config field 'dp_clip_norm'"},
      {std::string(kMinimal) + " dp_clip_norm: -0.5", "config field 'dp_clip_norm'"},
      {std::string(kMinimal) + " dp_clip_norm: inf", "config field 'dp_clip_norm'"},
      {std::string(kMinimal) + " dp_noise_multiplier: 1 mixed_precision: true", "config field 'mixed_precision'"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseFinetuneConfig(c.text, "site.textproto", "/x");
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.expected)) << c.text;
  }
}

TEST(FinetuneConfigTest, MaxImagePixelsMatchesTheDecoderAndCanBeSet) {
  EXPECT_EQ(v1::FinetuneConfig().max_image_pixels(), imaging::kDefaultMaxImagePixels);
  auto c = ParseFinetuneConfig(std::string(kMinimal) + " max_image_pixels: 100000000", "site.textproto", "/x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_image_pixels(), 100000000);
}

TEST(FinetuneConfigTest, RasterBitsStoredDefaultsToTheContainerAndTakesAutoOrABitCount) {
  EXPECT_EQ(v1::FinetuneConfig().raster_bits_stored(), 0);
  for (int bits : {-1, 0, 8, 12, 16}) {
    auto c = ParseFinetuneConfig(absl::StrCat(kMinimal, " raster_bits_stored: ", bits), "site.textproto", "/x");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->raster_bits_stored(), bits);
  }
}

TEST(FinetuneConfigTest, DpSgdIsOffByDefaultAndTakesItsBounds) {
  EXPECT_EQ(v1::FinetuneConfig().dp_noise_multiplier(), 0);
  EXPECT_EQ(v1::FinetuneConfig().dp_clip_norm(), 1.0);
  for (const char* dp : {"dp_noise_multiplier: 0.1", "dp_noise_multiplier: 10000 dp_clip_norm: 0.01",
                         "dp_noise_multiplier: 1.1 dp_clip_norm: 5", "mixed_precision: true dp_clip_norm: 3"}) {
    auto c = ParseFinetuneConfig(absl::StrCat(kMinimal, " ", dp), "site.textproto", "/x");
    EXPECT_TRUE(c.ok()) << dp << ": " << c.status();
  }
}

TEST(FinetuneConfigTest, LoadsFromAFileRelativeToIt) {
  testing::TempDir dir;
  const std::string path = dir.WriteFile("cfg/site.textproto", kMinimal);
  auto c = LoadFinetuneConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->out_dir(), dir.Join("cfg/out"));
  EXPECT_EQ(LoadFinetuneConfig(dir.Join("none.textproto")).status().code(), absl::StatusCode::kNotFound);
}

TEST(FinetuneConfigTest, RefusesFifosAndOversizedFiles) {
  // A FIFO would block the load forever; a huge file would be read whole.
  testing::TempDir dir;
  const std::string fifo = dir.Join("site.textproto");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<v1::FinetuneConfig> c = LoadFinetuneConfig(fifo);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("not a regular file"));
  const std::string big = dir.WriteFile("big.textproto", std::string(kMinimal) + std::string(2 << 20, '\n'));
  c = LoadFinetuneConfig(big);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("above the limit of 1048576 bytes"));
}

}  // namespace
}  // namespace fedtune::train
