#include "common/pki/pki_commands.h"

#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/io/file_util.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "common/status_macros.h"

namespace fedtune::pki {
namespace {

std::string FormatUtc(absl::Time t) { return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone()); }

std::vector<std::string> SplitList(const std::optional<std::string>& value) {
  std::vector<std::string> items;
  if (!value) return items;
  for (absl::string_view part : absl::StrSplit(*value, ',')) {
    absl::string_view item = absl::StripAsciiWhitespace(part);
    if (!item.empty()) items.emplace_back(item);
  }
  return items;
}

absl::StatusOr<IssueOptions> ValidityFlags(const cli::ParsedFlags& flags) {
  IssueOptions options;
  ASSIGN_OR_RETURN(options.days, flags.GetInt("days", 365));
  if (options.days < 1) return absl::InvalidArgumentError("--days must be at least 1");
  return options;
}

void PrintIssued(std::ostream& out, const IssuedCertificate& issued, const std::string& path) {
  out << "issued " << (issued.info.role ? RoleName(*issued.info.role) : "?") << " certificate for '"
      << issued.info.common_name << "'\n"
      << "  serial:      " << issued.info.serial << "\n"
      << "  valid:       " << FormatUtc(issued.info.not_before) << " to " << FormatUtc(issued.info.not_after) << "\n"
      << "  sha256:      " << issued.info.fingerprint_sha256 << "\n"
      << "  key sha256:  " << issued.info.public_key_sha256
      << (issued.info.role == Role::kSite ? " (the coordinator pins the site to this key: `fedtune sites list`)" : "")
      << "\n"
      << "  written to:  " << path << "\n";
}

cli::FlagSpec CaDirFlag() {
  return {"ca-dir", "the CA directory made by `pki init`", false, true, std::nullopt, "DIR"};
}

cli::FlagSpec DaysFlag(const std::string& fallback) {
  return {"days", "validity in days", false, false, fallback, "N"};
}

}  // namespace

cli::Command MakePkiInitCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "init"};
  c.summary = "create the consortium certificate authority (ECDSA P-256) in a new directory";
  c.flags = {
      {"consortium", "consortium name (CA subject O=NAME, CN=\"NAME fedtune CA\")", false, true, std::nullopt, "NAME"},
      {"out", "directory for ca.pem, ca.key, index.json and crl.pem (created)", false, true, std::nullopt, "DIR"},
      DaysFlag("3650"),
      {"crl-days", "validity of each CRL in days", false, false, std::string("30"), "N"},
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    CaOptions options;
    options.consortium = flags.GetOrDie("consortium");
    ASSIGN_OR_RETURN(options.days, flags.GetInt("days", 3650));
    ASSIGN_OR_RETURN(options.crl_days, flags.GetInt("crl-days", 30));
    const std::string dir = flags.GetOrDie("out");
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Initialize(dir, options));
    ASSIGN_OR_RETURN(X509Ptr cert, ParseCertificatePem(ca->ca_pem()));
    ASSIGN_OR_RETURN(CertificateInfo info, DescribeCertificate(cert.get()));
    out << "created the CA of consortium '" << options.consortium << "' in " << dir << "\n"
        << "  subject:     " << info.subject << "\n"
        << "  valid until: " << FormatUtc(info.not_after) << "\n"
        << "  sha256:      " << info.fingerprint_sha256 << "\n"
        << "  distribute " << CaCertPath(dir) << " to every site; keep " << CaKeyPath(dir) << " secret\n";
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiServerCertCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "server"};
  c.summary = "make the coordinator's key and TLS server certificate (SANs from --dns/--ip)";
  c.flags = {
      CaDirFlag(),
      {"out", "directory for server.key, server.pem and ca.pem (created)", false, true, std::nullopt, "DIR"},
      {"dns", "comma-separated DNS names the sites dial", false, false, std::nullopt, "NAME[,NAME]"},
      {"ip", "comma-separated IP addresses the sites dial", false, false, std::nullopt, "ADDR[,ADDR]"},
      {"name", "certificate common name", false, false, std::string("coordinator"), "CN"},
      DaysFlag("365"),
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    ServerCertificateSpec spec;
    spec.common_name = flags.GetOrDie("name");
    spec.dns_names = SplitList(flags.Get("dns"));
    spec.ip_addresses = SplitList(flags.Get("ip"));
    if (spec.dns_names.empty() && spec.ip_addresses.empty()) {
      return absl::InvalidArgumentError("give the coordinator's address with --dns and/or --ip");
    }
    ASSIGN_OR_RETURN(IssueOptions validity, ValidityFlags(flags));
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Open(flags.GetOrDie("ca-dir")));
    const std::string dir = flags.GetOrDie("out");
    RETURN_IF_ERROR(io::MakeDirectories(dir));
    const std::string key_path = absl::StrCat(dir, "/server.key");
    const std::string cert_path = absl::StrCat(dir, "/server.pem");
    // Checked before issuing so that a refusal leaves no orphan certificate in the index; the key write below still
    // refuses to replace a key that appeared meanwhile.
    if (std::filesystem::exists(key_path)) {
      return absl::AlreadyExistsError(
          absl::StrCat("'", key_path, "' already exists; refusing to replace a private key"));
    }
    ASSIGN_OR_RETURN(KeyPair key, KeyPair::Generate());
    ASSIGN_OR_RETURN(IssuedCertificate issued, ca->IssueServerCertificate(key, spec, validity));
    RETURN_IF_ERROR(key.WritePrivateKeyFile(key_path));
    RETURN_IF_ERROR(io::WriteFileAtomically(cert_path, issued.pem));
    RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(dir, "/ca.pem"), ca->ca_pem()));
    PrintIssued(out, issued, cert_path);
    out << "  SANs:        DNS " << absl::StrJoin(issued.info.dns_names, ",") << "  IP "
        << absl::StrJoin(issued.info.ip_addresses, ",") << "\n"
        << "  key:         " << key_path << " (mode 0600)\n";
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiRequestCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "request"};
  c.summary = "make this site's (or operator's) private key and a certificate signing request";
  c.flags = {
      {"site-id", "the site's id (the certificate's CN)", false, false, std::nullopt, "ID"},
      {"name", "an operator's name instead of a site id", false, false, std::nullopt, "NAME"},
      {"out", "directory for ID.key (stays here, mode 0600) and ID.csr (send it to the operator)", false, true,
       std::nullopt, "DIR"},
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    std::optional<std::string> site = flags.Get("site-id");
    std::optional<std::string> name = flags.Get("name");
    if (site.has_value() == name.has_value()) {
      return absl::InvalidArgumentError("give exactly one of --site-id and --name");
    }
    const std::string id = site ? *site : *name;
    RETURN_IF_ERROR(ValidateIdentityName(id, site ? "--site-id" : "--name"));
    const std::string dir = flags.GetOrDie("out");
    RETURN_IF_ERROR(io::MakeDirectories(dir));
    ASSIGN_OR_RETURN(KeyPair key, KeyPair::Generate());
    ASSIGN_OR_RETURN(std::string csr, CreateCsrPem(key, id));
    const std::string key_path = absl::StrCat(dir, "/", id, ".key");
    const std::string csr_path = absl::StrCat(dir, "/", id, ".csr");
    RETURN_IF_ERROR(key.WritePrivateKeyFile(key_path));
    RETURN_IF_ERROR(io::WriteFileAtomically(csr_path, csr));
    out << "private key: " << key_path << " (mode 0600; it never leaves this machine)\n"
        << "request:     " << csr_path << " (send it to the consortium operator for `fedtune pki sign`)\n";
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiSignCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "sign"};
  c.summary = "verify a CSR and issue a site or operator certificate, enrolling it in the CA index";
  c.flags = {
      {"csr", "the certificate signing request (PEM)", false, true, std::nullopt, "F"},
      {"role", "site or operator", false, true, std::nullopt, "ROLE"},
      CaDirFlag(),
      {"out", "where to write the certificate (PEM)", false, true, std::nullopt, "CERT.pem"},
      DaysFlag("365"),
      {"expect-cn", "refuse unless the CSR's common name is exactly this", false, false, std::nullopt, "ID"},
      {"replace", "the CN already has a valid certificate (the holder made a new key): revoke it and re-issue the CRL",
       true},
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    ASSIGN_OR_RETURN(Role role, ParseRole(flags.GetOrDie("role")));
    if (role == Role::kServer) {
      return absl::InvalidArgumentError("--role must be site or operator (server certificates: `pki server`)");
    }
    ASSIGN_OR_RETURN(IssueOptions validity, ValidityFlags(flags));
    const std::string csr_path = flags.GetOrDie("csr");
    ASSIGN_OR_RETURN(std::string csr_pem, io::ReadFile(csr_path));
    ASSIGN_OR_RETURN(VerifiedCsr csr, ParseAndVerifyCsrPem(csr_pem, csr_path));
    if (std::optional<std::string> expected = flags.Get("expect-cn"); expected && *expected != csr.common_name) {
      return absl::InvalidArgumentError(
          absl::StrCat(csr_path, ": common name is '", csr.common_name, "', expected '", *expected, "'"));
    }
    validity.replace = flags.GetBool("replace");
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Open(flags.GetOrDie("ca-dir")));
    ASSIGN_OR_RETURN(IssuedCertificate issued, ca->SignCsr(csr_pem, role, validity));
    const std::string cert_path = flags.GetOrDie("out");
    RETURN_IF_ERROR(io::WriteFileAtomically(cert_path, issued.pem));
    PrintIssued(out, issued, cert_path);
    for (const IndexEntry& e : issued.replaced) {
      out << "  replaces:    revoked serial " << e.serial << " (" << RoleName(e.role) << " '" << e.common_name
          << "'); CRL re-issued: " << CaCrlPath(ca->dir()) << "\n";
    }
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiRevokeCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "revoke"};
  c.summary = "revoke a certificate (by serial, site or operator) and re-issue the CRL";
  c.flags = {
      CaDirFlag(),
      {"serial", "serial number (decimal, or hex with 0x)", false, false, std::nullopt, "S"},
      {"site", "revoke every enrolled certificate of this site", false, false, std::nullopt, "ID"},
      {"operator", "revoke every enrolled certificate of this operator", false, false, std::nullopt, "NAME"},
      {"reason", "free text recorded in the index", false, false, std::nullopt, "TEXT"},
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    int given = flags.Has("serial") + flags.Has("site") + flags.Has("operator");
    if (given != 1) return absl::InvalidArgumentError("give exactly one of --serial, --site and --operator");
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Open(flags.GetOrDie("ca-dir")));
    const std::string reason = flags.Get("reason").value_or("");
    std::vector<IndexEntry> revoked;
    if (std::optional<std::string> serial = flags.Get("serial")) {
      ASSIGN_OR_RETURN(IndexEntry entry, ca->RevokeSerial(*serial, reason));
      revoked.push_back(entry);
    } else {
      Role role = flags.Has("site") ? Role::kSite : Role::kOperator;
      std::string name = flags.Has("site") ? flags.GetOrDie("site") : flags.GetOrDie("operator");
      ASSIGN_OR_RETURN(revoked, ca->RevokeByName(name, role, reason));
    }
    for (const IndexEntry& e : revoked) {
      out << "revoked " << RoleName(e.role) << " certificate serial " << e.serial << " ('" << e.common_name << "')\n";
    }
    out << "CRL re-issued: " << CaCrlPath(ca->dir()) << "\n";
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiCrlCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "crl"};
  c.summary = "re-issue the CRL from the CA index (fresh thisUpdate/nextUpdate)";
  c.flags = {CaDirFlag()};
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Open(flags.GetOrDie("ca-dir")));
    RETURN_IF_ERROR(ca->ReissueCrl());
    out << "CRL re-issued: " << CaCrlPath(ca->dir()) << "\n";
    return absl::OkStatus();
  };
  return c;
}

cli::Command MakePkiListCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"pki", "list"};
  c.summary = "list the certificates issued by the CA";
  c.flags = {CaDirFlag()};
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<CertificateAuthority> ca, CertificateAuthority::Open(flags.GetOrDie("ca-dir")));
    ASSIGN_OR_RETURN(CaIndex index, ca->ReadIndex());
    std::ostream& o = out;
    o << absl::StrFormat("%-8s %-9s %-24s %-9s %s\n", "SERIAL", "ROLE", "COMMON NAME", "STATUS", "NOT AFTER");
    for (const IndexEntry& e : index.entries) {
      o << absl::StrFormat("%-8s %-9s %-24s %-9s %s\n", e.serial, RoleName(e.role), e.common_name,
                           CertificateStatusName(e.status), FormatUtc(e.not_after));
    }
    return absl::OkStatus();
  };
  return c;
}

}  // namespace fedtune::pki
