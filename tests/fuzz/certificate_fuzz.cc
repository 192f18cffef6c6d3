// Fuzz harness "certificate": what the coordinator's CertificateVerifier and the CA read that an attacker or a
// damaged disk may control: peer certificates (PEM, as gRPC hands them over, and DER), CRLs (PEM, as crl.pem is read,
// and DER) and the CA's index.json. The first byte selects the parser (its value modulo 8); the rest is the input:
//   0  PEM certificate: ParseCertificatePem + DescribeCertificate (names, role, SANs, EKU, fingerprints)
//   1  DER certificate: d2i_X509 + DescribeCertificate
//   2  PEM CRL, 3  DER CRL: decoded and inspected the way the verifier inspects crl.pem (issuer, signature against
//      the CA key, nextUpdate, the revoked entries, a serial lookup)
//   4  index.json: ParseCaIndex; an accepted index must serialize and parse back to the same text
//   5  a peer certificate (PEM) through CertificateVerifier::Verify against a real CA made at start-up, for the
//      role given by the second byte
//   6  crl.pem of that CA replaced by the input, then CertificateVerifier::Reload + Verify of an enrolled site
//   7  index.json of that CA replaced by the input, then CertificateVerifier::Reload + Verify of an enrolled site
// The property checked is "no crash, no sanitizer report, no leak, no uncaught exception", plus for 6/7 that a
// verifier that reloaded successfully still refuses a certificate from another CA.
//
// Seed corpus (tests/fuzz/corpus/certificate/): files made by the project's own PKI code (`fedtune pki init`,
// `server`, `request`, `sign`, `revoke`), each prefixed with its selector byte:
//   cert-*.pem (0), cert-*.der (1, `openssl x509 -outform DER`), crl-*.pem (2), crl-*.der (3), index-*.json (4),
//   peer-*.pem (5), reload-crl-*.pem (6), reload-index-*.json (7); crash-* files are findings kept as regressions.
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "common/io/file_util.h"
#include "common/pki/ca_index.h"
#include "common/pki/certificate.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "common/pki/openssl_util.h"
#include "common/pki/verifier.h"

namespace fedtune::pki {
namespace {

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// A real CA with one enrolled site, made once per process, and verifiers over it. Directories live under a fresh
// temporary folder removed at exit.
struct Fixture {
  std::string root;
  std::string ca_dir;     // The CA, read by `verifier`; never modified.
  std::string crl_dir;    // A copy whose crl.pem the fuzzer replaces (selector 6).
  std::string index_dir;  // A copy whose index.json the fuzzer replaces (selector 7).
  std::string ca_pem, ca_index, crl_pem;
  std::string site_pem;     // An enrolled site certificate.
  std::string foreign_pem;  // A site certificate of another CA with the same consortium name.
  X509Ptr ca_cert;
  std::unique_ptr<CertificateVerifier> verifier, crl_verifier, index_verifier;
};

Fixture* fixture = nullptr;

void Die(absl::string_view what, const absl::Status& status) {
  std::fprintf(stderr, "certificate_fuzz set-up: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
               status.ToString().c_str());
  std::abort();
}

std::string SignSite(CertificateAuthority& ca, const std::string& cn) {
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  if (!key.ok()) Die("key", key.status());
  absl::StatusOr<std::string> csr = CreateCsrPem(*key, cn);
  if (!csr.ok()) Die("csr", csr.status());
  absl::StatusOr<IssuedCertificate> issued = ca.SignCsr(*csr, Role::kSite);
  if (!issued.ok()) Die("sign", issued.status());
  return issued->pem;
}

void CopyCa(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const char* name : {"ca.pem", "crl.pem", "index.json"}) {
    std::filesystem::copy_file(from + "/" + name, to + "/" + name);
  }
}

std::unique_ptr<CertificateVerifier> MakeVerifier(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<CertificateVerifier>> v = CertificateVerifier::Create(VerifierOptions::ForCaDir(dir));
  if (!v.ok()) Die("verifier", v.status());
  return *std::move(v);
}

void RemoveFixture() {
  if (fixture != nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(fixture->root, ec);
  }
}

void SetUp() {
  fixture = new Fixture;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/certificate_fuzz.XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) Die("mkdtemp", absl::InternalError(pattern));
  fixture->root = pattern;
  std::atexit(RemoveFixture);
  fixture->ca_dir = fixture->root + "/ca";
  CaOptions options;
  options.consortium = "Fuzz Consortium";
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> ca = CertificateAuthority::Initialize(fixture->ca_dir, options);
  if (!ca.ok()) Die("CA", ca.status());
  fixture->site_pem = SignSite(**ca, "site-a");
  const std::string revoked_pem = SignSite(**ca, "site-b");
  absl::Status revoked = (*ca)->RevokeByName("site-b", Role::kSite, "fuzz").status();
  if (!revoked.ok()) Die("revoke", revoked);
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> other =
      CertificateAuthority::Initialize(fixture->root + "/other", options);
  if (!other.ok()) Die("other CA", other.status());
  fixture->foreign_pem = SignSite(**other, "site-a");
  fixture->ca_pem = (*ca)->ca_pem();
  absl::StatusOr<X509Ptr> ca_cert = ParseCertificatePem(fixture->ca_pem);
  if (!ca_cert.ok()) Die("CA certificate", ca_cert.status());
  fixture->ca_cert = *std::move(ca_cert);
  fixture->crl_dir = fixture->root + "/crl";
  fixture->index_dir = fixture->root + "/index";
  CopyCa(fixture->ca_dir, fixture->crl_dir);
  CopyCa(fixture->ca_dir, fixture->index_dir);
  fixture->verifier = MakeVerifier(fixture->ca_dir);
  fixture->crl_verifier = MakeVerifier(fixture->crl_dir);
  fixture->index_verifier = MakeVerifier(fixture->index_dir);
}

// Rewrites `path` in place (no fsync: the fuzzer writes it thousands of times a second; Reload is forced anyway).
void Overwrite(const std::string& path, absl::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  FUZZ_CHECK(out.good());
}

void Describe(X509* cert) {
  absl::StatusOr<CertificateInfo> info = DescribeCertificate(cert);
  if (info.ok()) {
    FUZZ_CHECK(info->fingerprint_sha256.size() == 64);
    (void)ParseRole(info->organization);
  }
  (void)CertificateToPem(cert);
}

// What the verifier does with crl.pem after decoding it.
void InspectCrl(X509_CRL* crl) {
  (void)NameToString(X509_CRL_get_issuer(crl));
  (void)X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(fixture->ca_cert.get()));
  const int verified = X509_CRL_verify(crl, X509_get0_pubkey(fixture->ca_cert.get()));
  DrainOpenSslErrors();
  // The fuzzer cannot forge the CA's signature; a "verified" CRL would mean the check is broken.
  (void)verified;
  if (const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl)) (void)AsnTimeToTime(next);
  if (const ASN1_TIME* last = X509_CRL_get0_lastUpdate(crl)) (void)AsnTimeToTime(last);
  STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(crl);
  for (int i = 0; i < sk_X509_REVOKED_num(entries) && i < 64; ++i) {
    const X509_REVOKED* r = sk_X509_REVOKED_value(entries, i);
    (void)SerialToString(X509_REVOKED_get0_serialNumber(r));
    (void)AsnTimeToTime(X509_REVOKED_get0_revocationDate(r));
  }
  absl::StatusOr<Asn1IntegerPtr> serial = SerialFromString("1");
  FUZZ_CHECK(serial.ok());
  X509_REVOKED* found = nullptr;
  (void)X509_CRL_get0_by_serial(crl, &found, serial->get());
}

void FuzzIndex(absl::string_view json) {
  absl::StatusOr<CaIndex> index = ParseCaIndex(json, "fuzz index");
  if (!index.ok()) return;
  const std::string text = SerializeCaIndex(*index);
  absl::StatusOr<CaIndex> again = ParseCaIndex(text, "re-serialized fuzz index");
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(SerializeCaIndex(*again) == text);
  for (const IndexEntry& e : index->entries) (void)index->FindBySerial(e.serial);
}

// After a successful reload from fuzzed files, a certificate of another CA is still refused.
void CheckStillRefusesForeign(CertificateVerifier& verifier) {
  absl::StatusOr<PeerIdentity> foreign = verifier.Verify(fixture->foreign_pem, Role::kSite);
  FUZZ_CHECK(!foreign.ok());
}

}  // namespace
}  // namespace fedtune::pki

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fedtune::pki::SetUp();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fedtune::pki;  // NOLINT: a harness, not library code.
  if (size < 1) return 0;
  const int selector = data[0] % 8;
  const absl::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (selector) {
    case 0: {
      absl::StatusOr<X509Ptr> cert = ParseCertificatePem(input, "fuzz");
      if (cert.ok()) Describe(cert->get());
      break;
    }
    case 1: {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(input.data());
      X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(input.size())));
      if (cert) Describe(cert.get());
      break;
    }
    case 2: {
      BioPtr bio = MemBioOf(input);
      X509CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
      if (crl) InspectCrl(crl.get());
      break;
    }
    case 3: {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(input.data());
      X509CrlPtr crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(input.size())));
      if (crl) InspectCrl(crl.get());
      break;
    }
    case 4:
      FuzzIndex(input);
      break;
    case 5: {
      if (input.empty()) break;
      const Role role = input[0] % 3 == 0 ? Role::kSite : (input[0] % 3 == 1 ? Role::kOperator : Role::kServer);
      (void)fixture->verifier->Verify(input.substr(1), role);
      break;
    }
    case 6: {
      Overwrite(CaCrlPath(fixture->crl_dir), input);
      if (fixture->crl_verifier->Reload().ok()) {
        (void)fixture->crl_verifier->Verify(fixture->site_pem, Role::kSite);
        CheckStillRefusesForeign(*fixture->crl_verifier);
      }
      break;
    }
    case 7: {
      Overwrite(CaIndexPath(fixture->index_dir), input);
      if (fixture->index_verifier->Reload().ok()) {
        (void)fixture->index_verifier->Verify(fixture->site_pem, Role::kSite);
        CheckStillRefusesForeign(*fixture->index_verifier);
      }
      break;
    }
  }
  DrainOpenSslErrors();
  return 0;
}
