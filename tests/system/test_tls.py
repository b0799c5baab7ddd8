"""A frontend given a certificate serves TLS: the SDK verifies it with the CA and
works; a plaintext client gets nowhere."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.api.errors import ApiError
from controlplane.etcd.server import free_port, terminate
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until


def _self_signed(tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quanta-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_frontend(tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False) as system:
        endpoint = f"127.0.0.1:{free_port()}"
        log = open(tmp_path / "tls-frontend.log", "wb")  # noqa: SIM115 - closed below
        frontend = subprocess.Popen(
            [sys.executable, "-m", "controlplane.frontend", "--etcd", system.etcd_endpoint, "--root", system.root,
             "--listen", endpoint, "--tls-cert", cert, "--tls-key", key], stdout=log, stderr=subprocess.STDOUT)
        try:
            last: list[str] = []

            def answers() -> bool:
                with Client(endpoint, token=system.admin_token, tls_ca=cert, timeout=3) as secure:
                    try:
                        return secure.get_tenant("default").name == "tenants/default"
                    except ApiError as err:
                        last[:] = [f"{err.code.name}: {err}"]
                        return False

            def seen() -> str:
                lines = (tmp_path / "tls-frontend.log").read_text(errors="replace").splitlines()
                exited = frontend.poll()
                return (f"{last[0] if last else 'no answer'}; the frontend "
                        f"{'exited ' + str(exited) if exited is not None else 'runs'}; its log ends {lines[-3:]}")

            wait_until(answers, timeout=60, message="the TLS frontend to answer", seen=seen)
            with Client(endpoint, token=system.admin_token, timeout=3) as plain, pytest.raises(ApiError) as refused:
                plain.get_tenant("default")
            assert refused.value.code.name == "UNAVAILABLE"
        finally:
            terminate(frontend, 10)
            log.close()
