"""A private CA and a broker certificate for the local secured Kafka, made with ``cryptography``.

``dnsqr-pipeline kafka start --security sasl_ssl`` needs a certificate its clients can verify: a CA made
for this one cluster signs one broker certificate whose subject alternative names are the addresses
clients connect to (127.0.0.1 and localhost locally; the service name in Docker Compose). Both are PEM:
Kafka reads PEM key stores (``ssl.keystore.type=PEM``) and librdkafka, aiokafka and Java all trust a CA
given as a PEM file. The CA's private key is not written anywhere: nothing signs again after this, so a
stolen cluster directory cannot mint certificates that clients of other clusters would trust.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Long enough for a development cluster, short enough that a forgotten one does not stay trusted.
VALIDITY = datetime.timedelta(days=825)


@dataclasses.dataclass(frozen=True)
class BrokerTls:
    """Where the PEM files are: the CA certificate clients trust, and the broker's key + chain."""

    ca_file: Path
    #: the broker's private key (unencrypted PKCS#8) followed by its certificate: 0600
    key_file: Path
    cert_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dnsqr-pipeline"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that only the owner can read, from its creation on (no 0644 moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def stored_tls(directory: Path) -> BrokerTls:
    """The file names :func:`make_broker_tls` writes in ``directory``."""
    return BrokerTls(
        ca_file=directory / "ca.pem",
        key_file=directory / "broker-key.pem",
        cert_file=directory / "broker-cert.pem",
    )


def make_broker_tls(directory: Path, hosts: Iterable[str]) -> BrokerTls:
    """Create a CA and a broker certificate for ``hosts`` in ``directory``; return their paths.

    ECDSA P-256 keys: every client this project uses (librdkafka, aiokafka via Python's ssl, Java)
    accepts them, and they are made in milliseconds, unlike RSA on a busy 2-core box.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("dnsqr-pipeline local Kafka CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    hosts = list(dict.fromkeys(hosts))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    tls = stored_tls(directory)
    tls.ca_file.write_bytes(ca_cert.public_bytes(pem))
    tls.cert_file.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write_private(
        tls.key_file,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return tls
