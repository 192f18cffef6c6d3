#include "common/secagg/prg.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::secagg {

absl::StatusOr<std::vector<double>> SecureStandardNormals(int64_t n) {
  if (n < 0 || n > kMaxSecureNormals) {
    return absl::InvalidArgumentError(
        absl::StrCat("secure normals: count ", n, " outside [0, ", kMaxSecureNormals, "]"));
  }
  std::vector<double> out(static_cast<size_t>(n));
  if (n == 0) return out;
  Seed key;
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
    return absl::InternalError("RAND_bytes failed: no secret key for differential privacy's noise");
  }
  const int64_t pairs = (n + 1) / 2;
  absl::StatusOr<std::vector<uint32_t>> words = ExpandSeed(key, 4 * pairs);
  if (!words.ok()) return words.status();
  // A uniform in (0, 1] from 53 bits of two words (never 0, so the logarithm is finite).
  auto uniform = [&](int64_t w) {
    const uint64_t bits = ((static_cast<uint64_t>((*words)[w]) << 32) | (*words)[w + 1]) >> 11;
    return (static_cast<double>(bits) + 1.0) * (1.0 / 9007199254740992.0);
  };
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  for (int64_t p = 0; p < pairs; ++p) {
    const double r = std::sqrt(-2.0 * std::log(uniform(4 * p)));
    const double theta = kTwoPi * uniform(4 * p + 2);
    out[static_cast<size_t>(2 * p)] = r * std::cos(theta);
    if (2 * p + 1 < n) out[static_cast<size_t>(2 * p + 1)] = r * std::sin(theta);
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> ExpandSeed(const Seed& seed, int64_t length) {
  if (length < 0 || length > kMaxPrgLength) {
    return absl::InvalidArgumentError(absl::StrCat("prg: length ", length, " must be in [0, ", kMaxPrgLength, "]"));
  }
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  const unsigned char iv[16] = {0};
  if (ctx == nullptr || EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_ctr(), nullptr, seed.data(), iv) != 1) {
    return absl::InternalError("prg: AES-128-CTR initialisation failed");
  }
  const size_t bytes = static_cast<size_t>(length) * 4;
  std::vector<unsigned char> stream(bytes, 0);  // encrypting zeros yields the keystream
  constexpr size_t kChunk = size_t{1} << 24;
  for (size_t off = 0; off < bytes; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes - off));
    int written = 0;
    if (EVP_EncryptUpdate(ctx.get(), stream.data() + off, &written, stream.data() + off, n) != 1 || written != n) {
      return absl::InternalError("prg: AES-128-CTR update failed");
    }
  }
  std::vector<uint32_t> out(static_cast<size_t>(length));
  for (size_t i = 0; i < out.size(); ++i) {
    const unsigned char* p = stream.data() + 4 * i;
    out[i] = uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
  }
  return out;
}

}  // namespace fedtune::secagg
