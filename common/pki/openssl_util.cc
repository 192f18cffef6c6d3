#include "common/pki/openssl_util.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace fedtune::pki {

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long err;
  char buf[256];
  while ((err = ERR_get_error()) != 0) {
    ERR_error_string_n(err, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

absl::Status OpenSslStatus(absl::StatusCode code, absl::string_view what) {
  std::string errors = DrainOpenSslErrors();
  if (errors.empty()) return absl::Status(code, what);
  return absl::Status(code, absl::StrCat(what, " (", errors, ")"));
}

absl::Status OpenSslInternal(absl::string_view what) { return OpenSslStatus(absl::StatusCode::kInternal, what); }

BioPtr MemBioOf(absl::string_view data) { return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size()))); }

BioPtr NewMemBio() { return BioPtr(BIO_new(BIO_s_mem())); }

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == nullptr) return "";
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<absl::Time> AsnTimeToTime(const ASN1_TIME* t) {
  struct tm tm_value = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm_value) != 1) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument, "malformed ASN.1 time");
  }
  return absl::FromTimeT(timegm(&tm_value));
}

absl::Status SetAsnTime(ASN1_TIME* t, absl::Time time) {
  if (ASN1_TIME_set(t, absl::ToTimeT(time)) == nullptr) return OpenSslInternal("cannot set an ASN.1 time");
  return absl::OkStatus();
}

std::string SerialToString(const ASN1_INTEGER* serial) {
  BignumPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return "?";
  char* dec = BN_bn2dec(bn.get());
  if (dec == nullptr) return "?";
  std::string out(dec);
  OPENSSL_free(dec);
  return out;
}

absl::StatusOr<Asn1IntegerPtr> SerialFromString(absl::string_view text) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  bool hex = false;
  if (absl::StartsWithIgnoreCase(digits, "0x")) {
    hex = true;
    digits.remove_prefix(2);
  }
  if (digits.empty() || digits.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a certificate serial number"));
  }
  for (char c : digits) {
    if (hex ? !std::isxdigit(static_cast<unsigned char>(c)) : !std::isdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "' is not a certificate serial number (decimal, or hexadecimal with 0x)"));
    }
  }
  std::string owned(digits);
  BIGNUM* raw = nullptr;
  int ok = hex ? BN_hex2bn(&raw, owned.c_str()) : BN_dec2bn(&raw, owned.c_str());
  BignumPtr bn(raw);
  if (ok == 0 || !bn) return OpenSslInternal("cannot parse a serial number");
  Asn1IntegerPtr out(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!out) return OpenSslInternal("cannot encode a serial number");
  return out;
}

std::string NameEntry(const X509_NAME* name, int nid) {
  if (name == nullptr) return "";
  int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) return "";
  const X509_NAME_ENTRY* entry = X509_NAME_get_entry(name, index);
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(entry);
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

std::string NameToString(const X509_NAME* name) {
  BioPtr bio = NewMemBio();
  if (!bio || name == nullptr) return "?";
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  return BioContents(bio.get());
}

absl::StatusOr<std::string> CertificateFingerprint(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1) return OpenSslInternal("cannot hash a certificate");
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), len));
}

absl::StatusOr<std::string> PublicKeyFingerprint(X509* cert) {
  X509_PUBKEY* spki = X509_get_X509_PUBKEY(cert);
  unsigned char* der = nullptr;
  const int der_len = spki == nullptr ? -1 : i2d_X509_PUBKEY(spki, &der);
  if (der_len <= 0) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument, "cannot encode the certificate's public key");
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const int ok = EVP_Digest(der, static_cast<size_t>(der_len), md, &len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  if (ok != 1) return OpenSslInternal("cannot hash a public key");
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), len));
}

}  // namespace fedtune::pki
