"""TLS on every connection and a token per party: who may say what.

Each party (``client:K``, ``fed_server``, ``main_server``) holds its own token; the servers hold only the
tokens' SHA-256 digests (tokens.toml), so a copied server file lets nobody in. Every call carries the
caller's identity and token in its metadata; a server refuses unknown or mismatched callers
(UNAUTHENTICATED) and a client that speaks for another client (PERMISSION_DENIED). Every call also
carries its party's run identity, which the servers check next (_common.admit).
"""

import datetime
import hashlib
import hmac
import ipaddress
import secrets
import tomllib
from pathlib import Path
from typing import Any

import grpc

from ..errors import SplitfedError

ID_KEY, TOKEN_KEY = "x-splitfed-id", "authorization"
RUN_KEY = "x-splitfed-run"  # the caller's run identity (Config.run_identity as JSON): see _common.admit


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_identity(k: int) -> str:
    return f"client:{k}"


class Tokens:
    """The servers' view: identity -> SHA-256 digest of its token."""

    def __init__(self, digests: dict[str, str]) -> None:
        self.digests = digests

    @classmethod
    def load(cls, path: str | Path) -> "Tokens":
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f).get("tokens", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SplitfedError(f"cannot read tokens file {path}: {e}") from None
        if not table:
            raise SplitfedError(f"tokens file {path} has no [tokens] table")
        return cls({str(k): str(v) for k, v in table.items()})

    def identify(self, context: grpc.ServicerContext) -> str:
        """The caller's identity, after checking its token; aborts the call otherwise."""
        meta = dict(context.invocation_metadata())
        identity, token = meta.get(ID_KEY, ""), meta.get(TOKEN_KEY, "")
        expected = self.digests.get(identity)
        if (
            not token.startswith("Bearer ")
            or expected is None
            or not hmac.compare_digest(_digest(token[len("Bearer ") :]), expected)
        ):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown caller or wrong token")
        return identity


def call_metadata(identity: str, token: str, run: str = "") -> tuple[tuple[str, str], ...]:
    """What every call carries: who calls, its token, and (``run``) the run it belongs to."""
    return ((ID_KEY, identity), (TOKEN_KEY, f"Bearer {token}"), (RUN_KEY, run))


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SplitfedError(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise SplitfedError(f"token file {path} is empty")
    return token


def server_credentials(cert: str | Path, key: str | Path) -> grpc.ServerCredentials:
    try:
        return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
    except OSError as e:
        raise SplitfedError(f"cannot read TLS certificate or key: {e}") from None


def channel_credentials(ca: str | Path) -> grpc.ChannelCredentials:
    try:
        return grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    except OSError as e:
        raise SplitfedError(f"cannot read the CA certificate {ca}: {e.strerror}") from None


def make_credentials(folder: str | Path, num_clients: int, hosts: tuple[str, ...] = ("localhost",)) -> Path:
    """A private CA, a server certificate for ``hosts`` (names or IP addresses; and 127.0.0.1), and a
    token per party.

    Writes ca.pem, server.pem, server.key, tokens.toml (digests, for the servers) and <identity>.token
    (one per party). For demos and tests: a deployment uses its own PKI.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "splitfed demo CA")])
    authority = x509.BasicConstraints(ca=True, path_length=0)
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, authority, critical=True)
    key = ec.generate_private_key(ec.SECP256R1())

    def name(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    names = x509.SubjectAlternativeName([name(h) for h in dict.fromkeys([*hosts, "127.0.0.1"])])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = _certificate(subject, ca_name, key.public_key(), ca_key, names, critical=False)
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (folder / "server.key").chmod(0o600)
    _write_tokens(folder, num_clients)
    return folder


def _certificate(
    subject: Any, issuer: Any, public_key: Any, signer: Any, extension: Any, critical: bool
) -> Any:
    """A certificate of ``subject``'s ``public_key`` signed by ``issuer``'s key, valid for 30 days (from
    5 minutes ago: clocks differ), with one extension."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(extension, critical=critical)
        .sign(signer, hashes.SHA256())
    )


def _write_tokens(folder: Path, num_clients: int) -> None:
    """A fresh token per party in <identity>.token (its own), their digests in tokens.toml (the servers')."""
    lines = [
        "# SHA-256 digests of each party's token: the servers' copy; each party keeps its own token",
        "[tokens]",
    ]
    for identity in ["fed_server", "main_server"] + [client_identity(k) for k in range(num_clients)]:
        token = secrets.token_urlsafe(32)
        path = folder / f"{identity.replace(':', '_')}.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        lines.append(f'"{identity}" = "{_digest(token)}"')
    (folder / "tokens.toml").write_text("\n".join(lines) + "\n")
