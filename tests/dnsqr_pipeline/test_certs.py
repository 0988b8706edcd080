"""The local secured broker's CA and certificate."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dnsqr_pipeline import certs


def test_broker_certificate_is_issued_by_the_ca_for_the_given_hosts(tmp_path: Path) -> None:
    tls = certs.make_broker_tls(tmp_path, ["127.0.0.1", "localhost", "kafka"])
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    chain = x509.load_pem_x509_certificates(tls.cert_file.read_bytes())
    broker = chain[0]
    broker.verify_directly_issued_by(ca)
    assert chain[1] == ca
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "kafka"]
    assert not broker.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
    assert key.public_key() == broker.public_key()
    assert tls.key_file.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*ca*key*")), "the CA key must not be kept"
