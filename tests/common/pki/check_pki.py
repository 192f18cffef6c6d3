#!/usr/bin/env python3
"""Independent check of certificates made by `fedtune pki` (run by pki_commands_test).

Usage: check_pki.py CA_DIR SERVER_DIR SITE_PREFIX REVOKED_SITE_PREFIX OPERATOR_PREFIX
where PREFIX.pem / PREFIX.key are a certificate and its key. Parses everything with the `cryptography` package
(its X.509 parser is Rust, not OpenSSL), checks the extensions, names, key types, signatures, key file modes and the
CRL, then runs mutual-TLS handshakes on 127.0.0.1 with Python's ssl module: the enrolled site is accepted (the server
sees its CN), the revoked site is refused by a CRL-checking server, and the client verifies the server's SAN.
Exits 77 when `cryptography` is missing, 1 on the first failed check.
"""
import os
import socket
import ssl
import stat
import sys
import threading

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as e:  # pragma: no cover
    print("cannot import cryptography:", e)
    sys.exit(77)


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def load_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def load_key(path):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    check(mode == 0o600, f"{path} has mode {oct(mode)}, expected 0o600")
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def name_attr(name, oid):
    values = name.get_attributes_for_oid(oid)
    return values[0].value if values else None


def verify_signed_by(cert, issuer):
    issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def check_leaf(cert, key, ca, cn, role, eku):
    check(isinstance(cert.public_key(), ec.EllipticCurvePublicKey), f"{cn}: key is not EC")
    check(cert.public_key().curve.name == "secp256r1", f"{cn}: curve {cert.public_key().curve.name}")
    check(cert.public_key().public_numbers() == key.public_key().public_numbers(), f"{cn}: key does not match cert")
    check(name_attr(cert.subject, NameOID.COMMON_NAME) == cn, f"{cn}: subject {cert.subject.rfc4514_string()}")
    check(name_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == role, f"{cn}: OU is not {role}")
    check(cert.issuer == ca.subject, f"{cn}: issuer {cert.issuer.rfc4514_string()}")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    check(bc.critical and not bc.value.ca, f"{cn}: basicConstraints {bc}")
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    check(ku.digital_signature and not ku.key_cert_sign, f"{cn}: keyUsage {ku}")
    ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    check(ekus == [eku], f"{cn}: extendedKeyUsage {ekus}")
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    check(aki.key_identifier == ski.digest, f"{cn}: AKI does not name the CA key")
    verify_signed_by(cert, ca)
    check(isinstance(cert.signature_hash_algorithm, hashes.SHA256), f"{cn}: not signed with SHA-256")


def main():
    ca_dir, server_dir, site, revoked_site, operator = sys.argv[1:6]
    ca = load_cert(os.path.join(ca_dir, "ca.pem"))
    ca_key = load_key(os.path.join(ca_dir, "ca.key"))
    check(ca.public_key().curve.name == "secp256r1", "CA curve")
    check(ca_key.public_key().public_numbers() == ca.public_key().public_numbers(), "CA key mismatch")
    check(ca.subject == ca.issuer, "CA not self-issued")
    check(name_attr(ca.subject, NameOID.COMMON_NAME) == "Test Consortium fedtune CA", "CA CN")
    check(name_attr(ca.subject, NameOID.ORGANIZATION_NAME) == "Test Consortium", "CA O")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    check(bc.critical and bc.value.ca and bc.value.path_length == 0, f"CA basicConstraints {bc}")
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    check(ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature,
          f"CA keyUsage {ku}")
    verify_signed_by(ca, ca)
    days = (ca.not_valid_after - ca.not_valid_before).days
    check(99 <= days <= 100, f"CA validity {days} days, expected --days 100")
    print("CA: ok")

    server = load_cert(os.path.join(server_dir, "server.pem"))
    server_key = load_key(os.path.join(server_dir, "server.key"))
    check_leaf(server, server_key, ca, "coordinator", "server", ExtendedKeyUsageOID.SERVER_AUTH)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    check(san.get_values_for_type(x509.DNSName) == ["localhost", "coord.example"], f"server DNS SANs {san}")
    check([str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"], f"server IP SANs {san}")
    print("server: ok")

    site_cert, site_key = load_cert(site + ".pem"), load_key(site + ".key")
    check_leaf(site_cert, site_key, ca, "site-a", "site", ExtendedKeyUsageOID.CLIENT_AUTH)
    revoked_cert, revoked_key = load_cert(revoked_site + ".pem"), load_key(revoked_site + ".key")
    check_leaf(revoked_cert, revoked_key, ca, "site-b", "site", ExtendedKeyUsageOID.CLIENT_AUTH)
    op_cert, op_key = load_cert(operator + ".pem"), load_key(operator + ".key")
    check_leaf(op_cert, op_key, ca, "alice", "operator", ExtendedKeyUsageOID.CLIENT_AUTH)
    serials = {site_cert.serial_number, revoked_cert.serial_number, op_cert.serial_number, server.serial_number}
    check(len(serials) == 4, "serials are not unique")
    print("leaves: ok")

    with open(os.path.join(ca_dir, "crl.pem"), "rb") as f:
        crl = x509.load_pem_x509_crl(f.read())
    check(crl.is_signature_valid(ca.public_key()), "CRL signature")
    check(crl.issuer == ca.subject, "CRL issuer")
    check(crl.next_update > crl.last_update, "CRL nextUpdate")
    check(crl.get_revoked_certificate_by_serial_number(revoked_cert.serial_number) is not None, "site-b not in CRL")
    check(crl.get_revoked_certificate_by_serial_number(site_cert.serial_number) is None, "site-a in CRL")
    print("CRL: ok")

    check_tls(ca_dir, server_dir, site, revoked_site)


def check_tls(ca_dir, server_dir, site, revoked_site):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(os.path.join(server_dir, "server.pem"), os.path.join(server_dir, "server.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=os.path.join(ca_dir, "ca.pem"))
    server_ctx.load_verify_locations(cafile=os.path.join(ca_dir, "crl.pem"))
    server_ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    results = []

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            conn.settimeout(20)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert()
                    cn = dict(x[0] for x in peer["subject"])["commonName"]
                    results.append(("ok", cn))
                    tls.sendall(b"hello " + cn.encode())
            except (ssl.SSLError, OSError) as e:
                results.append(("refused", str(e)))

    thread = threading.Thread(target=serve, args=(2,))
    thread.start()

    def connect(prefix):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default.
        ctx.load_verify_locations(cafile=os.path.join(server_dir, "ca.pem"))
        ctx.load_cert_chain(prefix + ".pem", prefix + ".key")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.recv(64)

    got = connect(site)
    check(got == b"hello site-a", f"site-a got {got!r}")
    print("TLS: site-a accepted, server name 'localhost' verified")
    try:
        got = connect(revoked_site)
        # With TLS 1.3 the client may finish its handshake before the server's alert; then it reads nothing.
        check(got == b"", f"revoked site-b was served {got!r}")
    except (ssl.SSLError, ConnectionError):
        pass
    thread.join()
    listener.close()
    check(results[0] == ("ok", "site-a"), f"server saw {results[0]}")
    check(results[1][0] == "refused" and "revoked" in results[1][1], f"server saw {results[1]}")
    print("TLS: revoked site-b refused:", results[1][1])


if __name__ == "__main__":
    main()
