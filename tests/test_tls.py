"""TLS and mTLS with real servers on port 0 and certificates made here (`cryptography`): a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate, expired ones, and one from another CA.
Refusals are checked where clients see them: the call fails UNAVAILABLE because the handshake did."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mint import auth
from mint.errors import Code, MintError
from mint.models.loading import read_config
from mint.models.presets import init_base
from mint.procs import ServiceProcess, embedded
from mint.sdk import SamplingParams, ServiceClient
from mint.server import build_server, channel
from mint.tls import TLSConfig, split_address
from services.catalog.config import CatalogConfig
from services.catalog.main import create_server
from services.local_fleet import LocalFleet
from tests.conftest import assert_clean_logs
from tests.engine.conftest import random_adapter

ADMIN_KEY = auth.generate_key().key
DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class PKI:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    expired_server_cert: str
    expired_server_key: str
    expired_client_cert: str
    expired_client_key: str
    stranger_cert: str  # a client certificate from another CA
    stranger_key: str

    def server(self, **kw) -> TLSConfig:
        return TLSConfig(cert_file=self.server_cert, key_file=self.server_key, **kw)

    def client(self, cert: str = "", key: str = "") -> TLSConfig:
        return TLSConfig(cert_file=cert or self.client_cert, key_file=key or self.client_key, ca_file=self.ca)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(directory: Path, stem: str, ca, *, expired: bool = False) -> tuple[str, str]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - 30 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = _ca("mint-test-ca"), _ca("someone-else")
    (directory / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return PKI(
        str(directory / "ca.pem"),
        *_leaf(directory, "server", ca),
        *_leaf(directory, "client", ca),
        *_leaf(directory, "expired-server", ca, expired=True),
        *_leaf(directory, "expired-client", ca, expired=True),
        *_leaf(directory, "stranger", other_ca),
    )


@contextlib.contextmanager
def catalog_serving(tmp_path: Path, tls: TLSConfig):
    config = CatalogConfig(database_url=f"sqlite:///{tmp_path / 'catalog.db'}", blob_dir=str(tmp_path / "blobs"), admin_key=ADMIN_KEY,
                           address="127.0.0.1:0", tls=tls)
    server, port = create_server(config)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


@contextlib.contextmanager
def health_serving(tls: TLSConfig, *, public: bool):
    server, port = build_server([], tls=tls, public=public)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def health_status(ch: grpc.Channel) -> grpc.StatusCode:
    """OK when the call got through; else the status it failed with."""
    with ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


def whoami_code(client: ServiceClient) -> Code | None:
    try:
        client.catalog.whoami()
    except MintError as err:
        return err.code
    finally:
        client.close()
    return None


# --- TLS on a port: the SDK with the CA, without it, in plaintext --------------------------------------


def test_the_sdk_reaches_a_tls_catalog_with_the_ca(tmp_path, pki, monkeypatch):
    with catalog_serving(tmp_path, pki.server()) as port:
        assert whoami_code(ServiceClient(f"grpcs://localhost:{port}", ADMIN_KEY, ca_file=pki.ca)) is None
        monkeypatch.setenv("MINT_CA_FILE", pki.ca)
        assert whoami_code(ServiceClient(f"https://127.0.0.1:{port}", ADMIN_KEY)) is None
        assert whoami_code(ServiceClient(f"127.0.0.1:{port}", ADMIN_KEY)) is None  # a CA given: a bare address is TLS


def test_a_client_without_the_ca_or_without_tls_is_refused(tmp_path, pki):
    with catalog_serving(tmp_path, pki.server()) as port:
        # gRPC's default roots do not include this CA: the server's certificate is not trusted.
        assert whoami_code(ServiceClient(f"grpcs://127.0.0.1:{port}", ADMIN_KEY)) is Code.UNAVAILABLE
        assert whoami_code(ServiceClient(f"127.0.0.1:{port}", ADMIN_KEY)) is Code.UNAVAILABLE
        assert whoami_code(ServiceClient(f"grpc://127.0.0.1:{port}", ADMIN_KEY, ca_file=pki.ca)) is Code.UNAVAILABLE


def test_an_expired_server_certificate_is_refused_by_the_client(tmp_path, pki):
    expired = TLSConfig(cert_file=pki.expired_server_cert, key_file=pki.expired_server_key)
    with catalog_serving(tmp_path, expired) as port:
        assert whoami_code(ServiceClient(f"grpcs://127.0.0.1:{port}", ADMIN_KEY, ca_file=pki.ca)) is Code.UNAVAILABLE


# --- mTLS between services -----------------------------------------------------------------------------


def test_an_internal_port_with_a_ca_requires_a_client_certificate(tmp_path, pki):
    tls = pki.server(ca_file=pki.ca)
    assert tls.security(public=False) == "mTLS"
    with catalog_serving(tmp_path, tls) as port:
        address = f"127.0.0.1:{port}"
        assert health_status(channel(address, pki.client())) == grpc.StatusCode.OK
        assert health_status(channel(address, TLSConfig(ca_file=pki.ca))) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert health_status(channel(address, pki.client(pki.stranger_cert, pki.stranger_key))) == grpc.StatusCode.UNAVAILABLE
        assert health_status(channel(address)) == grpc.StatusCode.UNAVAILABLE


def test_an_expired_client_certificate_is_refused_by_the_server(pki):
    with health_serving(pki.server(ca_file=pki.ca), public=False) as port:
        expired = pki.client(pki.expired_client_cert, pki.expired_client_key)
        assert health_status(channel(f"127.0.0.1:{port}", expired)) == grpc.StatusCode.UNAVAILABLE
        assert health_status(channel(f"127.0.0.1:{port}", pki.client())) == grpc.StatusCode.OK


def test_the_public_port_asks_no_client_certificate_unless_told_to(pki):
    ca_only = TLSConfig(ca_file=pki.ca)
    public = pki.server(ca_file=pki.ca)
    assert public.security(public=True) == "TLS"
    with health_serving(public, public=True) as port:
        assert health_status(channel(f"grpcs://localhost:{port}", ca_only)) == grpc.StatusCode.OK
    required = pki.server(ca_file=pki.ca, client_auth="require")
    with health_serving(required, public=True) as port:
        assert health_status(channel(f"grpcs://localhost:{port}", ca_only)) == grpc.StatusCode.UNAVAILABLE
        assert health_status(channel(f"grpcs://localhost:{port}", pki.client())) == grpc.StatusCode.OK
    relaxed = pki.server(ca_file=pki.ca, client_auth="none")
    with health_serving(relaxed, public=False) as port:
        assert health_status(channel(f"127.0.0.1:{port}", ca_only)) == grpc.StatusCode.OK


# --- the embedded server and a fleet -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tls-base") / "tiny"
    init_base(path, arch="llama", preset="tiny", seed=5)
    return path


def test_the_embedded_server_serves_tls_on_its_public_port_and_https_on_its_http_door(tmp_path, pki, tiny_base):
    stack = embedded(model_path=str(tiny_base), data_dir=str(tmp_path / "data"), address="127.0.0.1:0", tls=pki.server())
    try:
        assert whoami_code(ServiceClient(f"grpcs://localhost:{stack.port}", stack.admin_key, ca_file=pki.ca)) is None
        assert whoami_code(ServiceClient(stack.address, stack.admin_key)) is Code.UNAVAILABLE
        # The HTTP door (OpenAI API, status page) serves the same certificate: HTTPS only.
        assert stack.http_url == f"https://127.0.0.1:{stack.http.port}"
        models = f"localhost:{stack.http.port}/v1/models"
        headers = {"authorization": f"Bearer {stack.admin_key}"}
        answer = httpx.get(f"https://{models}", headers=headers, verify=ssl.create_default_context(cafile=pki.ca), timeout=30)
        assert answer.status_code == 200 and answer.json()["object"] == "list"
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://{models}", headers=headers, timeout=30)
        with pytest.raises(httpx.TransportError):  # plaintext HTTP to the TLS port
            httpx.get(f"http://{models}", headers=headers, timeout=30)
    finally:
        stack.stop()


def test_the_embedded_default_stays_plaintext(tmp_path, tiny_base):
    stack = embedded(model_path=str(tiny_base), data_dir=str(tmp_path / "data"), address="127.0.0.1:0")
    try:
        assert whoami_code(ServiceClient(stack.address, stack.admin_key)) is None
    finally:
        stack.stop()


def test_mint_serve_takes_tls_flags_and_says_so(tmp_path, pki, tiny_base):
    args = ["-m", "mint.cli", "serve", "--model", str(tiny_base), "--data-dir", str(tmp_path / "data"), "--address", "127.0.0.1:0"]
    served = ServiceProcess([*args, "--tls-cert", pki.server_cert, "--tls-key", pki.server_key], log_path=str(tmp_path / "serve.log"))
    try:
        assert served.security == "TLS"
        admin_key = (tmp_path / "data" / "admin.key").read_text().strip()
        assert whoami_code(ServiceClient(f"grpcs://localhost:{served.port}", admin_key, ca_file=pki.ca)) is None
    finally:
        served.stop()
    refused = subprocess.run([sys.executable, *args, "--tls-cert", pki.server_cert], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "MINT_TLS_KEY" in refused.stderr


def test_a_fleet_over_mtls_serves_a_sample(tmp_path, pg_url, pki, tiny_base):
    fleet = LocalFleet(tmp_path, pg_url, tiny_base, engines=1, heartbeat_s=0.5, tls=pki.server(ca_file=pki.ca))
    try:
        assert (fleet.catalog.security, fleet.engines[0].security, fleet.gateway.security) == ("mTLS", "mTLS", "TLS")
        fleet.wait_for_engines(1)
        catalog = fleet.client.catalog
        catalog.create_policy("bot", "tiny")
        revision = catalog.publish("bot", random_adapter(read_config(tiny_base), rank=2, seed=1))
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        answer = fleet.client.create_sampling_client(f"acme/bot@{revision.number}").sample([1, 2, 3], 1, params)
        assert len(answer.sequences[0].tokens) == 4
        # The services' own ports are closed to anyone without a client certificate of the fleet's CA.
        for process in (fleet.catalog, fleet.engines[0]):
            assert health_status(channel(process.address, TLSConfig(ca_file=pki.ca))) == grpc.StatusCode.UNAVAILABLE
            assert health_status(channel(process.address)) == grpc.StatusCode.UNAVAILABLE
        assert whoami_code(ServiceClient(fleet.gateway.address, fleet.member_key)) is Code.UNAVAILABLE  # plaintext
    finally:
        fleet.stop()
    assert_clean_logs(fleet.workdir.glob("*.log"))


# --- bad config --------------------------------------------------------------------------------------


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(MintError) as caught:
        fn(*args, **kwargs)
    assert caught.value.code is Code.INVALID_ARGUMENT
    return caught.value.message


def test_bad_tls_values_are_refused_naming_the_variable(tmp_path, pki):
    missing = str(tmp_path / "nowhere.pem")
    message = refusal(CatalogConfig.from_env, {"MINT_TLS_CERT": missing, "MINT_TLS_KEY": pki.server_key})
    assert "MINT_TLS_CERT" in message and missing in message
    assert "MINT_TLS_KEY" in refusal(TLSConfig.from_env, {"MINT_TLS_CERT": pki.server_cert})
    assert "MINT_TLS_CERT" in refusal(TLSConfig.from_env, {"MINT_TLS_KEY": pki.server_key})
    assert "MINT_TLS_KEY" in refusal(TLSConfig.from_env, {"MINT_TLS_CERT": pki.server_cert, "MINT_TLS_KEY": pki.server_cert})
    assert "MINT_TLS_CA" in refusal(TLSConfig.from_env, {"MINT_TLS_CA": pki.server_key})
    message = refusal(TLSConfig.from_env, {"MINT_TLS_CLIENT_AUTH": "sometimes"})
    assert "MINT_TLS_CLIENT_AUTH" in message and "require, none" in message
    assert "MINT_TLS_CA" in refusal(TLSConfig, cert_file=pki.server_cert, key_file=pki.server_key, client_auth="require")
    assert "ca_file" in refusal(ServiceClient, "grpcs://127.0.0.1:1", ADMIN_KEY, ca_file=missing)
    assert "grpcs://host:port" in refusal(split_address, "grpcs://")


def test_sdk_ca_variable_is_named_when_its_file_is_missing(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere.pem")
    monkeypatch.setenv("MINT_CA_FILE", missing)
    message = refusal(ServiceClient, "grpcs://127.0.0.1:1", ADMIN_KEY)
    assert "MINT_CA_FILE" in message and missing in message
