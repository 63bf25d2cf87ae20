"""The certificate of the engine's TLS listener, which the stock ``flyte`` CLI talks to.

Why TLS on loopback: the flyte 2.12.1 SDK sends a credential only over TLS. With ``admin.insecure`` it
installs no auth interceptor at all, and its proxy command setting (``admin.proxyCommand``) fails at init
(``AsyncCommandAuthenticator() got multiple values for keyword argument 'command'``). Over TLS, its
``ExternalCommand`` auth type runs a command for the token and sends ``Authorization: Bearer`` (after a
first ``unauthenticated`` answer), so the config TaskDeck writes names a command, never a token.

A private CA signs one server certificate for the loopback names (and the advertise host); the CA's
key is dropped once it has signed, so nothing can mint another certificate it vouches for. Clients
trust ``<data>/tls/ca.pem`` (``admin.caCertFilePath``). A certificate near its end, or one that does
not name a host it must, is replaced at start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from engine.auth import write_private

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
VALID_DAYS = 397  # what browsers accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)


def loopback_names(advertise_host: str | None = None) -> list[str]:
    return ["localhost", "127.0.0.1", "::1", *([advertise_host] if advertise_host else [])]


def ensure_certificate(tls_dir: Path, hosts: list[str], now: dt.datetime | None = None) -> tuple[Path, Path, Path]:
    """(CA file, server certificate, server key) under ``tls_dir``, made or renewed as needed."""
    now = now or dt.datetime.now(dt.timezone.utc)
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    ca, cert, key = tls_dir / CA_FILE, tls_dir / CERT_FILE, tls_dir / KEY_FILE
    if not _still_good(cert, key, ca, hosts, now):
        ca_pem, cert_pem, key_pem = _issue(hosts, now)
        write_private(key, key_pem.decode())
        write_private(cert, cert_pem.decode())  # not secret, but the data directory is private throughout
        write_private(ca, ca_pem.decode())
    return ca, cert, key


def _still_good(cert: Path, key: Path, ca: Path, hosts: list[str], now: dt.datetime) -> bool:
    from cryptography import x509

    if not (cert.is_file() and key.is_file() and ca.is_file()):
        return False
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound, OSError):
        return False
    present = {str(v) for v in names.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in names.get_values_for_type(x509.IPAddress)}
    return certificate.not_valid_after_utc - RENEW_BEFORE > now and all(h in present for h in hosts)


def _issue(hosts: list[str], now: dt.datetime) -> tuple[bytes, bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TaskDeck engine CA")])
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TaskDeck engine")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    key_pem = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    return (ca.public_bytes(serialization.Encoding.PEM), server.public_bytes(serialization.Encoding.PEM), key_pem)
