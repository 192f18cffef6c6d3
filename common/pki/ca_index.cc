#include "common/pki/ca_index.h"

#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/io/json_number.h"
#include "common/pki/openssl_util.h"
#include "common/status_macros.h"

namespace fedtune::pki {
namespace {

constexpr char kFormat[] = "fedtune-ca-index-v1";
constexpr int64_t kMaxCounter = int64_t{1} << 62;
constexpr int64_t kMaxCrlDays = 36500;

std::string FormatIndexTime(absl::Time t) { return absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()); }

absl::StatusOr<absl::Time> ParseTimeField(const std::string& text, absl::string_view where) {
  absl::Time t;
  std::string error;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &error)) {
    return absl::DataLossError(absl::StrCat(where, ": bad time '", text, "': ", error));
  }
  return t;
}

}  // namespace

const IndexEntry* CaIndex::FindBySerial(absl::string_view serial) const {
  for (const IndexEntry& e : entries) {
    if (e.serial == serial) return &e;
  }
  return nullptr;
}

IndexEntry* CaIndex::FindBySerial(absl::string_view serial) {
  for (IndexEntry& e : entries) {
    if (e.serial == serial) return &e;
  }
  return nullptr;
}

std::string CertificateStatusName(CertificateStatus status) {
  return status == CertificateStatus::kRevoked ? "revoked" : "enrolled";
}

namespace {

// An integer field of the index (io::JsonInteger: a float such as 3.3e121 is refused, not cast); `fallback` when the
// field is absent and a fallback is given.
absl::StatusOr<int64_t> IntegerField(const nlohmann::json& doc, const char* name, absl::string_view source,
                                     std::optional<int64_t> fallback = std::nullopt) {
  if (!doc.contains(name)) {
    if (fallback) return *fallback;
    return absl::DataLossError(absl::StrCat(source, ": \"", name, "\" is missing"));
  }
  absl::StatusOr<int64_t> value = io::JsonInteger(doc[name], absl::StrCat("\"", name, "\""));
  if (!value.ok()) return absl::DataLossError(absl::StrCat(source, ": ", value.status().message()));
  return *value;
}

}  // namespace

absl::StatusOr<CaIndex> ParseCaIndex(absl::string_view json, absl::string_view source) {
  nlohmann::json doc = nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::DataLossError(absl::StrCat(source, ": not a JSON object"));
  }
  CaIndex index;
  try {
    if (!doc.contains("format") || !doc["format"].is_string() || doc["format"].get<std::string>() != kFormat) {
      return absl::DataLossError(absl::StrCat(source, ": \"format\" is not \"", kFormat, "\""));
    }
    index.consortium = doc.at("consortium").get<std::string>();
    ASSIGN_OR_RETURN(index.next_serial, IntegerField(doc, "next_serial", source));
    ASSIGN_OR_RETURN(index.next_crl_number, IntegerField(doc, "next_crl_number", source));
    ASSIGN_OR_RETURN(index.crl_days, IntegerField(doc, "crl_days", source, int64_t{30}));
    // Bounds that keep the CA's arithmetic (++next_serial, now + crl_days) far from overflow.
    for (auto [name, value, max] :
         {std::tuple<const char*, int64_t, int64_t>{"next_serial", index.next_serial, kMaxCounter},
          {"next_crl_number", index.next_crl_number, kMaxCounter},
          {"crl_days", index.crl_days, kMaxCrlDays}}) {
      if (value < 1 || value > max) {
        return absl::DataLossError(absl::StrCat(source, ": \"", name, "\" is ", value, ", not in [1, ", max, "]"));
      }
    }
    const nlohmann::json& certs = doc.at("certificates");
    if (!certs.is_array()) return absl::DataLossError(absl::StrCat(source, ": \"certificates\" is not an array"));
    for (size_t i = 0; i < certs.size(); ++i) {
      const nlohmann::json& c = certs[i];
      std::string where = absl::StrCat(source, ": certificates[", i, "]");
      IndexEntry e;
      e.serial = c.at("serial").get<std::string>();
      absl::StatusOr<Asn1IntegerPtr> serial = SerialFromString(e.serial);
      if (!serial.ok() || SerialToString(serial->get()) != e.serial) {
        return absl::DataLossError(absl::StrCat(where, ": serial '", e.serial, "' is not a decimal serial number"));
      }
      e.common_name = c.at("common_name").get<std::string>();
      // The CA only issues identity names; anything else (e.g. terminal escapes `pki list` would print) is damage.
      if (absl::Status name = ValidateIdentityName(e.common_name, "common_name"); !name.ok()) {
        return absl::DataLossError(absl::StrCat(where, ": ", name.message()));
      }
      absl::StatusOr<Role> role = ParseRole(c.at("role").get<std::string>());
      if (!role.ok()) return absl::DataLossError(absl::StrCat(where, ": ", role.status().message()));
      e.role = *role;
      std::string status = c.at("status").get<std::string>();
      if (status == "enrolled") {
        e.status = CertificateStatus::kEnrolled;
      } else if (status == "revoked") {
        e.status = CertificateStatus::kRevoked;
      } else {
        return absl::DataLossError(absl::StrCat(where, ": unknown status '", status, "'"));
      }
      ASSIGN_OR_RETURN(e.not_before, ParseTimeField(c.at("not_before").get<std::string>(), where));
      ASSIGN_OR_RETURN(e.not_after, ParseTimeField(c.at("not_after").get<std::string>(), where));
      ASSIGN_OR_RETURN(e.issued_at, ParseTimeField(c.at("issued_at").get<std::string>(), where));
      std::string revoked_at = c.value("revoked_at", "");
      if (!revoked_at.empty()) {
        ASSIGN_OR_RETURN(absl::Time t, ParseTimeField(revoked_at, where));
        e.revoked_at = t;
      }
      e.reason = c.value("reason", "");
      e.fingerprint_sha256 = c.at("fingerprint_sha256").get<std::string>();
      if (index.FindBySerial(e.serial) != nullptr) {
        return absl::DataLossError(absl::StrCat(where, ": duplicate serial ", e.serial));
      }
      index.entries.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(source, ": ", e.what()));
  }
  return index;
}

std::string SerializeCaIndex(const CaIndex& index) {
  nlohmann::json certs = nlohmann::json::array();
  for (const IndexEntry& e : index.entries) {
    certs.push_back({{"serial", e.serial},
                     {"common_name", e.common_name},
                     {"role", RoleName(e.role)},
                     {"status", CertificateStatusName(e.status)},
                     {"not_before", FormatIndexTime(e.not_before)},
                     {"not_after", FormatIndexTime(e.not_after)},
                     {"issued_at", FormatIndexTime(e.issued_at)},
                     {"revoked_at", e.revoked_at ? FormatIndexTime(*e.revoked_at) : ""},
                     {"reason", e.reason},
                     {"fingerprint_sha256", e.fingerprint_sha256}});
  }
  nlohmann::json doc = {{"format", kFormat},
                        {"consortium", index.consortium},
                        {"next_serial", index.next_serial},
                        {"next_crl_number", index.next_crl_number},
                        {"crl_days", index.crl_days},
                        {"certificates", certs}};
  return doc.dump(2) + "\n";
}

}  // namespace fedtune::pki
