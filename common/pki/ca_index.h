// The CA's index of issued certificates (DIR/index.json): one JSON document holding the serial counter, the CRL
// number counter and one entry per issued certificate with its state (enrolled or revoked). The CA rewrites it
// atomically (io::WriteFileAtomically) under its directory lock; the verifier reads it to refuse certificates that
// are unknown to the index or revoked. Layout:
//   {"format": "fedtune-ca-index-v1", "consortium": "...", "next_serial": 3, "next_crl_number": 2, "crl_days": 30,
//    "certificates": [{"serial": "1", "common_name": "site-a", "role": "site", "status": "enrolled",
//                      "not_before": "2026-...Z", "not_after": "...", "issued_at": "...", "revoked_at": "",
//                      "reason": "", "fingerprint_sha256": "ab12..."}]}
#ifndef FEDTUNE_COMMON_PKI_CA_INDEX_H_
#define FEDTUNE_COMMON_PKI_CA_INDEX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"

namespace fedtune::pki {

enum class CertificateStatus { kEnrolled, kRevoked };

struct IndexEntry {
  std::string serial;  // Decimal, unique within the CA.
  std::string common_name;
  Role role = Role::kSite;
  CertificateStatus status = CertificateStatus::kEnrolled;
  absl::Time not_before;
  absl::Time not_after;
  absl::Time issued_at;
  std::optional<absl::Time> revoked_at;  // Set when revoked.
  std::string reason;                    // Free text given at revocation; may be empty.
  std::string fingerprint_sha256;        // Of the issued certificate.
};

struct CaIndex {
  std::string consortium;
  int64_t next_serial = 1;      // Serial of the next issued certificate (sequential, starting at 1).
  int64_t next_crl_number = 1;  // cRLNumber of the next CRL.
  int64_t crl_days = 30;        // nextUpdate of each CRL = thisUpdate + crl_days.
  std::vector<IndexEntry> entries;

  // nullptr when absent. Pointers are invalidated by adding entries.
  const IndexEntry* FindBySerial(absl::string_view serial) const;
  IndexEntry* FindBySerial(absl::string_view serial);
};

// "enrolled" / "revoked".
std::string CertificateStatusName(CertificateStatus status);

// Parses index.json. DataLoss naming `source` and the field when the document is not a valid index: missing or
// mistyped fields, unknown role or status, malformed times, a common name that is not an identity name
// (ValidateIdentityName), a serial that is not a canonical decimal number,
// duplicate serials, next_serial / next_crl_number outside [1, 2^62], crl_days outside [1, 36500].
absl::StatusOr<CaIndex> ParseCaIndex(absl::string_view json, absl::string_view source);
// The JSON text of `index` (pretty-printed, newline-terminated).
std::string SerializeCaIndex(const CaIndex& index);

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_CA_INDEX_H_
