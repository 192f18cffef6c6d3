// Simulated secure aggregation peers for the site agent's tests: sites with certificates from a test CA and fresh
// session keys, whose roster entries are signed as a real agent signs them (common/secagg/session.h).
#ifndef FEDTUNE_TESTS_SITE_AGENT_AGENT_SECAGG_PEERS_H_
#define FEDTUNE_TESTS_SITE_AGENT_AGENT_SECAGG_PEERS_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/pki/certificate_authority.h"
#include "common/pki/key_pair.h"
#include "common/secagg/key_agreement.h"
#include "common/secagg/session.h"
#include "fedtune/v1/federation.pb.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"

namespace fedtune::agent::testing {

inline std::string AsString(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }
inline std::vector<uint8_t> AsBytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// One simulated site of a session: its certificate (from `ca`) and its cipher and mask key pairs.
struct SimulatedPeer {
  // `replace`: the CA re-enrols a name that already has a certificate (a second key holder of one site id).
  SimulatedPeer(pki::CertificateAuthority& ca, std::string id, int peer_index, int64_t samples, bool replace = false)
      : site_id(std::move(id)), index(peer_index), num_samples(samples) {
    pki::IssueOptions options;
    options.replace = replace;
    credentials = pki::testing::Enroll(ca, site_id, pki::Role::kSite, options);
    auto c = secagg::KeyPair::Generate();
    auto s = secagg::KeyPair::Generate();
    EXPECT_TRUE(c.ok() && s.ok());
    cipher = std::make_unique<secagg::KeyPair>(*std::move(c));
    mask = std::make_unique<secagg::KeyPair>(*std::move(s));
  }

  // The roster entry, signed with the certificate's key.
  v1::SecAggPeer Entry(const secagg::SessionId& session) const {
    v1::SecAggKeys keys;
    keys.set_cipher_public_key(AsString(cipher->public_key()));
    keys.set_mask_public_key(AsString(mask->public_key()));
    keys.set_num_samples(num_samples);
    auto key = pki::KeyPair::FromPrivateKeyPem(credentials.key_pem);
    EXPECT_TRUE(key.ok()) << key.status();
    if (key.ok()) {
      const absl::Status signed_keys = secagg::SignKeys(key->get(), session, site_id, &keys);
      EXPECT_TRUE(signed_keys.ok()) << signed_keys;
    }
    v1::SecAggPeer peer;
    peer.set_site_id(site_id);
    peer.set_index(index);
    peer.set_cipher_public_key(keys.cipher_public_key());
    peer.set_mask_public_key(keys.mask_public_key());
    peer.set_signature(keys.signature());
    peer.set_certificate_pem(credentials.cert_pem);
    peer.set_num_samples(num_samples);
    return peer;
  }

  std::string site_id;
  int index = 0;
  int64_t num_samples = 0;
  pki::testing::Credentials credentials;
  std::unique_ptr<secagg::KeyPair> cipher;
  std::unique_ptr<secagg::KeyPair> mask;
};

}  // namespace fedtune::agent::testing

#endif  // FEDTUNE_TESTS_SITE_AGENT_AGENT_SECAGG_PEERS_H_
