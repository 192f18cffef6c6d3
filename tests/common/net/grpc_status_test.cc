#include "common/net/grpc_status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::net {
namespace {

TEST(RedactPathsTest, ReplacesAbsolutePathsAndKeepsTheRest) {
  EXPECT_EQ(RedactPaths("/var/lib/fedtune/spool/run-1/r1-a1-site-a-ab.upload: tensor 'x': shape [3]"),
            "<path>: tensor 'x': shape [3]");
  EXPECT_EQ(RedactPaths("cannot open '/tmp/state/blobs/abc': No such file or directory"),
            "cannot open '<path>': No such file or directory");
  EXPECT_EQ(RedactPaths("model blob /srv/x/blobs/ab is missing."), "model blob <path> is missing.");
  EXPECT_EQ(RedactPaths("(in /a/b, then /c)"), "(in <path>, then <path>)");
  EXPECT_EQ(RedactPaths("path=/etc/fedtune/x.pem"), "path=<path>");
  // Not paths.
  for (const char* kept : {"SiteService/UploadUpdate refused", "round 1/2 of run-0001", "a / b", "see https://x.org/a",
                           "", "/", "ends with /"}) {
    EXPECT_EQ(RedactPaths(kept), kept);
  }
}

TEST(RedactPathsTest, PeerStatusKeepsTheCode) {
  grpc::Status status = ToPeerGrpcStatus(absl::DataLossError("reading /var/lib/fedtune/blobs/ab failed"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(status.error_message(), "reading <path> failed");
  EXPECT_TRUE(ToPeerGrpcStatus(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace fedtune::net
