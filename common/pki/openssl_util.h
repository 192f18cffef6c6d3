// Small helpers over OpenSSL 3's C API shared by the pki library: owning smart pointers for OpenSSL objects, turning
// the OpenSSL error queue into absl::Status messages, PEM/BIO conversions and ASN.1 time conversions.
// Internal to common/pki; other subsystems use the higher-level headers (key_pair.h, certificate.h, ...).
#ifndef FEDTUNE_COMMON_PKI_OPENSSL_UTIL_H_
#define FEDTUNE_COMMON_PKI_OPENSSL_UTIL_H_

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fedtune::pki {

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const {
    if (p != nullptr) Free(p);
  }
};

using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpenSslDeleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, OpenSslDeleter<X509_REQ, X509_REQ_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, OpenSslDeleter<X509_CRL, X509_CRL_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpenSslDeleter<X509_NAME, X509_NAME_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION, X509_EXTENSION_free>>;
using X509RevokedPtr = std::unique_ptr<X509_REVOKED, OpenSslDeleter<X509_REVOKED, X509_REVOKED_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE, X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpenSslDeleter<BIGNUM, BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpenSslDeleter<ASN1_INTEGER, ASN1_INTEGER_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, OpenSslDeleter<ASN1_TIME, ASN1_TIME_free>>;

// Drains the calling thread's OpenSSL error queue into one string ("" when empty).
std::string DrainOpenSslErrors();

// A status with `code` and message "<what>: <OpenSSL errors>", draining the error queue.
absl::Status OpenSslStatus(absl::StatusCode code, absl::string_view what);
// Shorthand for an OpenSSL failure that should not happen (allocation, encoding our own objects): Internal.
absl::Status OpenSslInternal(absl::string_view what);

// A read-only memory BIO over `data` (which must outlive the BIO).
BioPtr MemBioOf(absl::string_view data);
// A fresh writable memory BIO.
BioPtr NewMemBio();
// The contents of a memory BIO.
std::string BioContents(BIO* bio);

// Conversions between ASN1_TIME and absl::Time. AsnTimeToTime fails (InvalidArgument) on a malformed time.
absl::StatusOr<absl::Time> AsnTimeToTime(const ASN1_TIME* t);
absl::Status SetAsnTime(ASN1_TIME* t, absl::Time time);

// Serial numbers as decimal strings ("42"). InvalidArgument when `decimal` is not a non-negative integer; accepts
// "0x"-prefixed hexadecimal too.
std::string SerialToString(const ASN1_INTEGER* serial);
absl::StatusOr<Asn1IntegerPtr> SerialFromString(absl::string_view text);

// The first value of `nid` (e.g. NID_commonName) in `name` as UTF-8, or "" when absent.
std::string NameEntry(const X509_NAME* name, int nid);

// A one-line RFC 2253 rendering of a name, for messages.
std::string NameToString(const X509_NAME* name);

// SHA-256 of the DER encoding of `cert`, lower-case hex.
absl::StatusOr<std::string> CertificateFingerprint(X509* cert);

// SHA-256 of the DER encoding of `cert`'s SubjectPublicKeyInfo, lower-case hex (what `openssl x509 -pubkey | openssl
// pkey -pubin -outform DER | sha256sum` prints): identifies the key across certificates. InvalidArgument when the
// key cannot be encoded.
absl::StatusOr<std::string> PublicKeyFingerprint(X509* cert);

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_OPENSSL_UTIL_H_
