// CLI commands of the consortium PKI, delivered as cli::Command factories for the lead to register:
//   fedtune:      pki init, pki server, pki sign, pki revoke, pki crl, pki list (and pki request, for operators)
//   fedtune-site: pki request
// Each factory takes the stream for its human-readable output, which must outlive the command; logs go to glog as
// usual.
// Exit codes follow cli::ExitCodeFor: bad flags/input 2, I/O failure 1.
#ifndef FEDTUNE_COMMON_PKI_PKI_COMMANDS_H_
#define FEDTUNE_COMMON_PKI_PKI_COMMANDS_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::pki {

// pki init --consortium NAME --out DIR [--days 3650] [--crl-days 30]
// Creates the consortium CA in DIR: ca.pem, ca.key (0600), index.json (serial counter + issued certificates),
// crl.pem (empty CRL). AlreadyExists (exit 2) when DIR already holds a CA.
cli::Command MakePkiInitCommand(std::ostream& out);

// pki server --ca-dir DIR --out DIR2 [--dns NAME[,NAME...]] [--ip ADDR[,ADDR...]] [--name coordinator] [--days 365]
// Makes the coordinator's key and TLS server certificate: DIR2/server.key (0600), DIR2/server.pem (SANs from --dns and
// --ip, at least one required; extendedKeyUsage serverAuth; OU=server), and DIR2/ca.pem (a copy of the CA
// certificate: the root the coordinator and sites trust). Refuses to replace an existing DIR2/server.key.
cli::Command MakePkiServerCertCommand(std::ostream& out);

// pki request (--site-id ID | --name OPERATOR) --out DIR
// On the site (or the operator's machine): makes a P-256 key and a CSR with CN = ID. Writes DIR/ID.key (0600; it
// never leaves this machine) and DIR/ID.csr (to send to the consortium operator). Refuses to replace an existing
// key file (AlreadyExists).
cli::Command MakePkiRequestCommand(std::ostream& out);

// pki sign --csr F --role site|operator --ca-dir DIR --out CERT.pem [--days 365] [--expect-cn ID] [--replace]
// Verifies the CSR (signature, P-256, CN syntax; with --expect-cn, that the CN is ID), issues the certificate
// (O=consortium, OU=role, CN from the CSR, clientAuth, next sequential serial), records it in DIR/index.json as
// enrolled and writes CERT.pem. Prints the serial and SHA-256 fingerprint.
// AlreadyExists (exit 2), naming the CN and the enrolled serial, when the CN already has a valid site or operator
// certificate; --replace re-enrols it: the old certificate is revoked in the same index update and the CRL
// re-issued (CertificateAuthority::SignCsr).
cli::Command MakePkiSignCommand(std::ostream& out);

// pki revoke --ca-dir DIR (--serial S | --site ID | --operator NAME) [--reason TEXT]
// Marks the certificate(s) revoked in the index and re-issues DIR/crl.pem. --site/--operator revoke every enrolled
// certificate of that identity. NotFound (exit 2) when nothing matches; FailedPrecondition when already revoked.
cli::Command MakePkiRevokeCommand(std::ostream& out);

// pki crl --ca-dir DIR: re-issues DIR/crl.pem from the index (fresh thisUpdate/nextUpdate); run it periodically.
cli::Command MakePkiCrlCommand(std::ostream& out);

// pki list --ca-dir DIR: prints the index (serial, role, common name, status, validity).
cli::Command MakePkiListCommand(std::ostream& out);

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_PKI_COMMANDS_H_
