#include "common/secagg/prg.h"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::secagg {

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
