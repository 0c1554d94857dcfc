"""Transport security: the certificates a MinT server presents, whose certificates it asks for, and what a
channel to another MinT server trusts. grpcio does the cryptography; this module only decides which files
go where.

Every service reads the same four variables (`TLSConfig.from_env`, at the entry point, through
`mint.config.FleetConfig`):

    MINT_TLS_CERT         PEM certificate (chain) this service presents: on its port, and to servers that ask
                          for a client certificate
    MINT_TLS_KEY          its PEM private key (required with MINT_TLS_CERT)
    MINT_TLS_CA           PEM bundle of the CAs this service trusts: servers it calls are checked against it,
                          and so are its callers' client certificates where it requires them. With a CA, an
                          address without a scheme is reached over TLS.
    MINT_TLS_CLIENT_AUTH  require | none: whether this port asks callers for a certificate signed by
                          MINT_TLS_CA. Default: require on internal ports (catalog, engines, trainers) when a CA
                          is given (mTLS between services); none on the public port (the gateway, embedded
                          `mint serve`), whose clients are SDK users with an API key and no certificate.

Addresses: `grpcs://host:port` and `https://host:port` are TLS, `grpc://` and `http://` plaintext, and a bare
`host:port` is TLS exactly when a CA is configured. Without any of these variables everything is plaintext,
as the embedded default on loopback is.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any

import grpc

from mint.errors import invalid

CLIENT_AUTH_CHOICES = ("require", "none")
_SCHEMES = {"grpcs": True, "https": True, "grpc": False, "http": False}
CERT_PEM, KEY_PEM = "-----BEGIN CERTIFICATE-----", "PRIVATE KEY-----"


def read_pem(path: str, name: str, marker: str) -> bytes:
    """The bytes of the PEM file `path`, set by `name` (a variable or argument, for the error message), which
    must contain `marker`; refused with the name and the path otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise invalid(f"{name}={path!r} cannot be read: {err.strerror or err}") from None
    if marker.encode() not in data:
        what = "a PEM private key" if marker == KEY_PEM else "PEM certificates"
        raise invalid(f"{name}={path!r} holds no {what} (no {marker.strip('-')!r} block)")
    return data


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class TLSConfig:
    cert_file: str = dataclasses.field(default="", metadata={"env": "MINT_TLS_CERT"})
    key_file: str = dataclasses.field(default="", metadata={"env": "MINT_TLS_KEY"})
    ca_file: str = dataclasses.field(default="", metadata={"env": "MINT_TLS_CA"})
    # require | none; "": require on internal ports when ca_file is set, none on the public port
    client_auth: str = dataclasses.field(default="", metadata={"env": "MINT_TLS_CLIENT_AUTH"})

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = ("MINT_TLS_CERT", "MINT_TLS_KEY") if self.cert_file else ("MINT_TLS_KEY", "MINT_TLS_CERT")
            raise invalid(f"{given} is set but {missing} is not; a TLS port needs both the certificate and its private key")
        if self.client_auth not in ("", *CLIENT_AUTH_CHOICES):
            raise invalid(f"MINT_TLS_CLIENT_AUTH={self.client_auth!r} is not a client-certificate policy; use one of {', '.join(CLIENT_AUTH_CHOICES)}")
        if self.client_auth == "require" and not (self.cert_file and self.ca_file):
            raise invalid("MINT_TLS_CLIENT_AUTH=require needs MINT_TLS_CERT, MINT_TLS_KEY and MINT_TLS_CA (client certificates are checked against the CA, over TLS)")
        # Read now, so a service with an unusable file refuses to start instead of failing its first handshake.
        self._pems()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: str) -> TLSConfig:
        env = os.environ if env is None else env
        values = {field.name: env.get(field.metadata["env"], "") for field in dataclasses.fields(cls)}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v}})

    def env(self) -> dict[str, str]:
        """The variables that give a child process this config."""
        return {field.metadata["env"]: getattr(self, field.name) for field in dataclasses.fields(self) if getattr(self, field.name)}

    def _pems(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(certificate chain, private key, CA bundle), None where not configured."""
        cert = read_pem(self.cert_file, "MINT_TLS_CERT", CERT_PEM) if self.cert_file else None
        key = read_pem(self.key_file, "MINT_TLS_KEY", KEY_PEM) if self.key_file else None
        ca = read_pem(self.ca_file, "MINT_TLS_CA", CERT_PEM) if self.ca_file else None
        return cert, key, ca

    def requires_client_certs(self, *, public: bool) -> bool:
        if self.client_auth:
            return self.client_auth == "require"
        return bool(self.cert_file and self.ca_file) and not public

    def security(self, *, public: bool) -> str:
        """What a port with this config serves, for the ready line and logs: plaintext, TLS or mTLS."""
        if not self.cert_file:
            return "plaintext"
        return "mTLS" if self.requires_client_certs(public=public) else "TLS"

    def server_credentials(self, *, public: bool) -> grpc.ServerCredentials | None:
        """TLS credentials for a port (`public`: the one SDK clients call); None for plaintext."""
        cert, key, ca = self._pems()
        if cert is None or key is None:
            return None
        required = self.requires_client_certs(public=public)
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if required else None, require_client_auth=required)

    def http_server_options(self, *, public: bool) -> dict[str, Any]:
        """The same port policy for an HTTP server (uvicorn.Config's ssl_* options); {} for plaintext."""
        if not self.cert_file:
            return {}
        options: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.requires_client_certs(public=public):
            options |= {"ssl_ca_certs": self.ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trust the configured CA (gRPC's default roots when none) and present this service's certificate to
        servers that ask for one."""
        cert, key, ca = self._pems()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def split_address(address: str) -> tuple[str, bool | None]:
    """(gRPC target, whether the scheme asks for TLS: None when the address has no MinT scheme)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        return address, None
    target = rest.rstrip("/")
    if not target or "/" in target:
        raise invalid(f"address {address!r} is not {scheme}://host:port")
    return target, _SCHEMES[scheme.lower()]


def wants_tls(address: str, tls: TLSConfig | None) -> bool:
    secure = split_address(address)[1]
    return secure if secure is not None else bool(tls is not None and tls.ca_file)
