// Tests of common/pki/pki_commands.h: the whole enrolment flow through the CLI commands (init, server, request,
// sign, revoke, crl, list), their input errors, and an independent check of the issued files with Python's
// `cryptography` package and a real TLS handshake through Python's `ssl` (check_pki.py).
#include "common/pki/pki_commands.h"

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::pki {
namespace {

using ::fedtune::pki::testing::FileMode;
using ::testing::HasSubstr;

absl::Status RunCommand(const cli::Command& command, const std::vector<std::string>& args) {
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  return command.run(*flags);
}

class PkiCommandsTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return tmp_.Join(name); }
  fedtune::testing::TempDir tmp_;
  std::ostringstream out_;
};

TEST_F(PkiCommandsTest, FullEnrolmentFlow) {
  const std::string ca = Path("ca"), server = Path("server"), site = Path("site-a"), op = Path("alice");
  ASSERT_TRUE(
      RunCommand(MakePkiInitCommand(out_), {"--consortium", "Test Consortium", "--out", ca, "--days", "100"}).ok());
  EXPECT_THAT(out_.str(), HasSubstr("CN=Test Consortium fedtune CA"));
  EXPECT_EQ(FileMode(CaKeyPath(ca)), 0600);

  ASSERT_TRUE(RunCommand(MakePkiServerCertCommand(out_),
                         {"--ca-dir", ca, "--out", server, "--dns", "localhost,coord.example", "--ip", "127.0.0.1"})
                  .ok());
  EXPECT_EQ(FileMode(server + "/server.key"), 0600);
  EXPECT_EQ(*io::ReadFile(server + "/ca.pem"), *io::ReadFile(CaCertPath(ca)));

  // The site makes its own key and CSR; only the CSR travels.
  ASSERT_TRUE(RunCommand(MakePkiRequestCommand(out_), {"--site-id", "site-a", "--out", site}).ok());
  EXPECT_EQ(FileMode(site + "/site-a.key"), 0600);
  EXPECT_THAT(*io::ReadFile(site + "/site-a.csr"), HasSubstr("BEGIN CERTIFICATE REQUEST"));
  ASSERT_TRUE(RunCommand(MakePkiSignCommand(out_), {"--csr", site + "/site-a.csr", "--role", "site", "--ca-dir", ca,
                                                    "--out", site + "/site-a.pem", "--expect-cn", "site-a"})
                  .ok());
  EXPECT_THAT(out_.str(), HasSubstr("serial:      2"));  // 1 is the server certificate.

  ASSERT_TRUE(RunCommand(MakePkiRequestCommand(out_), {"--name", "alice", "--out", op}).ok());
  ASSERT_TRUE(RunCommand(MakePkiSignCommand(out_),
                         {"--csr", op + "/alice.csr", "--role", "operator", "--ca-dir", ca, "--out", op + "/alice.pem"})
                  .ok());

  // A second site, enrolled then revoked by site id.
  const std::string site_b = Path("site-b");
  ASSERT_TRUE(RunCommand(MakePkiRequestCommand(out_), {"--site-id", "site-b", "--out", site_b}).ok());
  ASSERT_TRUE(RunCommand(MakePkiSignCommand(out_), {"--csr", site_b + "/site-b.csr", "--role", "site", "--ca-dir", ca,
                                                    "--out", site_b + "/site-b.pem"})
                  .ok());

  auto verifier = CertificateVerifier::Create(VerifierOptions::ForCaDir(ca));
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  absl::StatusOr<PeerIdentity> a = (*verifier)->Verify(*io::ReadFile(site + "/site-a.pem"), Role::kSite);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->common_name, "site-a");
  EXPECT_TRUE((*verifier)->Verify(*io::ReadFile(site_b + "/site-b.pem"), Role::kSite).ok());
  EXPECT_TRUE((*verifier)->Verify(*io::ReadFile(op + "/alice.pem"), Role::kOperator).ok());
  EXPECT_EQ((*verifier)->Verify(*io::ReadFile(op + "/alice.pem"), Role::kSite).status().code(),
            absl::StatusCode::kPermissionDenied);

  ASSERT_TRUE(RunCommand(MakePkiRevokeCommand(out_), {"--ca-dir", ca, "--site", "site-b", "--reason", "left"}).ok());
  EXPECT_THAT(out_.str(), HasSubstr("revoked site certificate serial 4 ('site-b')"));
  EXPECT_EQ((*verifier)->Verify(*io::ReadFile(site_b + "/site-b.pem"), Role::kSite).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE((*verifier)->Verify(*io::ReadFile(site + "/site-a.pem"), Role::kSite).ok());

  ASSERT_TRUE(RunCommand(MakePkiCrlCommand(out_), {"--ca-dir", ca}).ok());
  std::ostringstream list;
  ASSERT_TRUE(RunCommand(MakePkiListCommand(list), {"--ca-dir", ca}).ok());
  EXPECT_THAT(list.str(), HasSubstr("server"));
  EXPECT_THAT(list.str(), ::testing::ContainsRegex("4 +site +site-b +revoked"));
  EXPECT_THAT(list.str(), ::testing::ContainsRegex("2 +site +site-a +enrolled"));

  // Independent check: Python's cryptography parses the files; Python's ssl performs mTLS handshakes with them.
  const std::string script = std::string(FEDTUNE_SOURCE_DIR) + "/tests/common/pki/check_pki.py";
  std::string output;
  int rc = fedtune::testing::RunCommand(absl::StrCat("/usr/bin/python3 ", script, " ", ca, " ", server, " ", site,
                                                     "/site-a ", site_b, "/site-b ", op, "/alice"),
                                        &output);
  if (rc == 77) GTEST_SKIP() << "python3-cryptography is not installed: " << output;
  EXPECT_EQ(rc, 0) << output;
  std::cerr << "check_pki.py:\n" << output;
  EXPECT_THAT(output, HasSubstr("TLS: revoked site-b refused"));
  // The checker can fail: with the enrolled and the revoked site swapped it must report a failure.
  rc = fedtune::testing::RunCommand(absl::StrCat("/usr/bin/python3 ", script, " ", ca, " ", server, " ", site_b,
                                                 "/site-b ", site, "/site-a ", op, "/alice"),
                                    &output);
  EXPECT_EQ(rc, 1) << output;
  EXPECT_THAT(output, HasSubstr("FAIL:"));
}

TEST_F(PkiCommandsTest, InputErrorsAreClear) {
  const std::string ca = Path("ca");
  ASSERT_TRUE(RunCommand(MakePkiInitCommand(out_), {"--consortium", "C", "--out", ca}).ok());
  absl::Status again = RunCommand(MakePkiInitCommand(out_), {"--consortium", "C", "--out", ca});
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;

  const std::string garbage = tmp_.WriteFile("garbage.csr", "this is not a CSR\n");
  absl::Status bad_csr = RunCommand(MakePkiSignCommand(out_),
                                    {"--csr", garbage, "--role", "site", "--ca-dir", ca, "--out", Path("x.pem")});
  EXPECT_EQ(bad_csr.code(), absl::StatusCode::kInvalidArgument) << bad_csr;
  EXPECT_THAT(bad_csr.message(), HasSubstr(garbage));
  EXPECT_THAT(bad_csr.message(), HasSubstr("no PEM certificate request"));

  ASSERT_TRUE(RunCommand(MakePkiRequestCommand(out_), {"--site-id", "s1", "--out", Path("s1")}).ok());
  const std::string csr = Path("s1") + "/s1.csr";
  EXPECT_EQ(
      RunCommand(MakePkiSignCommand(out_), {"--csr", csr, "--role", "admin", "--ca-dir", ca, "--out", Path("x.pem")})
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      RunCommand(MakePkiSignCommand(out_), {"--csr", csr, "--role", "server", "--ca-dir", ca, "--out", Path("x.pem")})
          .code(),
      absl::StatusCode::kInvalidArgument);
  absl::Status wrong_cn = RunCommand(MakePkiSignCommand(out_), {"--csr", csr, "--role", "site", "--ca-dir", ca, "--out",
                                                                Path("x.pem"), "--expect-cn", "s2"});
  EXPECT_EQ(wrong_cn.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_cn.message(), HasSubstr("common name is 's1', expected 's2'"));
  EXPECT_EQ(RunCommand(MakePkiSignCommand(out_),
                       {"--csr", csr, "--role", "site", "--ca-dir", Path("noca"), "--out", Path("x.pem")})
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RunCommand(MakePkiSignCommand(out_),
                       {"--csr", csr, "--role", "site", "--ca-dir", ca, "--out", Path("x.pem"), "--days", "0"})
                .code(),
            absl::StatusCode::kInvalidArgument);

  // A second request into the same directory keeps the existing key.
  const std::string key_before = *io::ReadFile(Path("s1") + "/s1.key");
  EXPECT_EQ(RunCommand(MakePkiRequestCommand(out_), {"--site-id", "s1", "--out", Path("s1")}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*io::ReadFile(Path("s1") + "/s1.key"), key_before);
  EXPECT_EQ(RunCommand(MakePkiRequestCommand(out_), {"--site-id", "../evil", "--out", Path("s1")}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunCommand(MakePkiRequestCommand(out_), {"--out", Path("s1")}).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(RunCommand(MakePkiRevokeCommand(out_), {"--ca-dir", ca}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunCommand(MakePkiRevokeCommand(out_), {"--ca-dir", ca, "--serial", "7"}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RunCommand(MakePkiRevokeCommand(out_), {"--ca-dir", ca, "--site", "nobody"}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RunCommand(MakePkiServerCertCommand(out_), {"--ca-dir", ca, "--out", Path("srv")}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      RunCommand(MakePkiServerCertCommand(out_), {"--ca-dir", ca, "--out", Path("srv"), "--ip", "10.0.0.1"}).ok());
  absl::Status twice =
      RunCommand(MakePkiServerCertCommand(out_), {"--ca-dir", ca, "--out", Path("srv"), "--ip", "10.0.0.1"});
  EXPECT_EQ(twice.code(), absl::StatusCode::kAlreadyExists) << twice;
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> opened = CertificateAuthority::Open(ca);
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ((*opened)->ReadIndex()->entries.size(), 1u);  // The server certificate only: every sign above failed.
}

TEST_F(PkiCommandsTest, CommandsRegisterInACommandSetWithExitCodes) {
  cli::CommandSet set("fedtune", "test");
  for (cli::Command c :
       {MakePkiInitCommand(out_), MakePkiServerCertCommand(out_), MakePkiRequestCommand(out_), MakePkiSignCommand(out_),
        MakePkiRevokeCommand(out_), MakePkiCrlCommand(out_), MakePkiListCommand(out_)}) {
    set.Add(std::move(c));
  }
  auto main = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "fedtune");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    return set.Main(static_cast<int>(argv.size()), argv.data());
  };
  const std::string ca = Path("ca");
  EXPECT_EQ(main({"pki", "init", "--consortium", "C", "--out", ca}), cli::kExitOk);
  EXPECT_EQ(main({"pki", "init", "--consortium", "C", "--out", ca}), cli::kExitBadInput);  // AlreadyExists.
  EXPECT_EQ(main({"pki", "request", "--site-id", "s1", "--out", Path("s1")}), cli::kExitOk);
  EXPECT_EQ(
      main({"pki", "sign", "--csr", Path("s1") + "/s1.csr", "--role", "site", "--ca-dir", ca, "--out", Path("s1.pem")}),
      cli::kExitOk);
  EXPECT_EQ(main({"pki", "revoke", "--ca-dir", ca, "--serial", "1"}), cli::kExitOk);
  EXPECT_EQ(main({"pki", "revoke", "--ca-dir", ca, "--serial", "1"}), cli::kExitBadInput);  // Already revoked.
  EXPECT_EQ(main({"pki", "crl", "--ca-dir", ca}), cli::kExitOk);
  EXPECT_EQ(main({"pki", "list", "--ca-dir", ca}), cli::kExitOk);
  EXPECT_EQ(main({"pki", "sign", "--csr", Path("none.csr"), "--role", "site", "--ca-dir", ca, "--out", Path("x")}),
            cli::kExitBadInput);  // NotFound.
}

// One common name, one valid certificate: a CSR for a CN that is already enrolled (for any role) is refused, naming
// the CN and the enrolled serial; `--replace` issues the new certificate and revokes the old one in the same index
// update, with a fresh CRL.
TEST_F(PkiCommandsTest, SignRefusesAnEnrolledCommonNameUnlessReplace) {
  const std::string ca = Path("ca");
  ASSERT_TRUE(RunCommand(MakePkiInitCommand(out_), {"--consortium", "C", "--out", ca}).ok());
  auto request = [&](const std::string& dir, const std::string& flag, const std::string& id) {
    EXPECT_TRUE(RunCommand(MakePkiRequestCommand(out_), {flag, id, "--out", Path(dir)}).ok());
    return Path(dir) + "/" + id + ".csr";
  };
  auto sign = [&](const std::string& csr, const std::string& role, const std::string& out,
                  std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--csr", csr, "--role", role, "--ca-dir", ca, "--out", Path(out)};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCommand(MakePkiSignCommand(out_), args);
  };
  const std::string oslo_csr = request("oslo", "--site-id", "oslo");
  ASSERT_TRUE(sign(oslo_csr, "site", "oslo.pem").ok());  // Serial 1.
  // Someone else's CSR claiming the same site id (another key), with and without --expect-cn; and as an operator.
  const std::string impostor_csr = request("impostor", "--site-id", "oslo");
  for (const std::vector<std::string>& extra : {std::vector<std::string>{}, {"--expect-cn", "oslo"}}) {
    absl::Status s = sign(impostor_csr, "site", "impostor.pem", extra);
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
    EXPECT_THAT(s.message(), HasSubstr("'oslo'"));
    EXPECT_THAT(s.message(), HasSubstr("serial 1"));
    EXPECT_THAT(s.message(), HasSubstr("--replace"));
  }
  const std::string op_csr = request("op", "--name", "oslo");
  EXPECT_EQ(sign(op_csr, "operator", "op.pem").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(io::ReadFile(Path("impostor.pem")).ok());
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> opened = CertificateAuthority::Open(ca);
  ASSERT_TRUE(opened.ok());
  ASSERT_EQ((*opened)->ReadIndex()->entries.size(), 1u);  // Nothing was issued.

  // The site re-keyed (new key, new CSR): the operator replaces its certificate explicitly.
  const std::string rekey_csr = request("oslo-new", "--site-id", "oslo");
  out_.str("");
  absl::Status replaced = sign(rekey_csr, "site", "oslo-new.pem", {"--replace", "--expect-cn", "oslo"});
  ASSERT_TRUE(replaced.ok()) << replaced;
  EXPECT_THAT(out_.str(), HasSubstr("serial:      2"));
  EXPECT_THAT(out_.str(), HasSubstr("revoked serial 1"));
  absl::StatusOr<CaIndex> index = (*opened)->ReadIndex();
  ASSERT_TRUE(index.ok());
  ASSERT_EQ(index->entries.size(), 2u);
  EXPECT_EQ(index->FindBySerial("1")->status, CertificateStatus::kRevoked);
  EXPECT_THAT(index->FindBySerial("1")->reason, HasSubstr("replaced by serial 2"));
  EXPECT_EQ(index->FindBySerial("2")->status, CertificateStatus::kEnrolled);
  // Every relying party sees it: the CRL lists the old serial, the verifier refuses the old and accepts the new.
  auto verifier = CertificateVerifier::Create(VerifierOptions::ForCaDir(ca));
  ASSERT_TRUE(verifier.ok());
  VerifierOptions crl_only = VerifierOptions::ForCaDir(ca);
  crl_only.index_path = "";
  auto crl_verifier = CertificateVerifier::Create(crl_only);
  ASSERT_TRUE(crl_verifier.ok());
  for (CertificateVerifier* v : {verifier->get(), crl_verifier->get()}) {
    EXPECT_EQ(v->Verify(*io::ReadFile(Path("oslo.pem")), Role::kSite).status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_TRUE(v->Verify(*io::ReadFile(Path("oslo-new.pem")), Role::kSite).ok());
  }
  // A revoked or expired certificate does not block a new enrolment.
  ASSERT_TRUE(RunCommand(MakePkiRevokeCommand(out_), {"--ca-dir", ca, "--site", "oslo"}).ok());
  EXPECT_TRUE(sign(impostor_csr, "site", "oslo-3.pem").ok());
}

}  // namespace
}  // namespace fedtune::pki
