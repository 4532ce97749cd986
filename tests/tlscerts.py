"""Certificates made at test time (trustme): a CA the broker trusts, the broker's certificate,
client certificates from that CA and one from a CA nobody trusts. Nothing is committed; the
files live in a temporary directory for the test session."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from hare.testing import TLSOptions


@dataclass
class Certs:
    dir: Path
    ca: trustme.CA
    cacert: Path  # the CA's certificate: the broker verifies clients with it, clients the broker
    server_cert: Path
    server_key: Path
    client: trustme.LeafCert  # CN=app, from the trusted CA
    special: trustme.LeafCert  # a CN with characters a distinguished name escapes
    untrusted: trustme.LeafCert  # CN=app, from a CA the broker does not trust
    client_pem: Path  # ``client``'s key and certificate in one file (for kombu's ssl options)

    def options(self, **kwargs: object) -> TLSOptions:
        """The broker's TLS options: its certificate and key, the CA, and ``kwargs``."""
        return TLSOptions(certfile=str(self.server_cert), keyfile=str(self.server_key),
                          cacertfile=str(self.cacert), **kwargs)  # type: ignore[arg-type]

    def client_context(self, cert: trustme.LeafCert | None = None,
                       maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context that trusts the broker, presenting ``cert`` if given."""
        ctx = ssl.create_default_context(cafile=str(self.cacert))
        if cert is not None:
            cert.configure_cert(ctx)
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA(organization_name="hare tests")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cacert, server_cert, server_key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca.cert_pem.write_to_path(str(cacert))
    server.cert_chain_pems[0].write_to_path(str(server_cert))
    server.private_key_pem.write_to_path(str(server_key))
    client = ca.issue_cert("app.example", common_name="app", organization_name="Example",
                           organization_unit_name="Apps")
    special = ca.issue_cert("ops.example", common_name="ops+dev, eu", organization_name="Example",
                            organization_unit_name="Apps")
    untrusted = trustme.CA().issue_cert("app.example", common_name="app")
    client_pem = directory / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    return Certs(directory, ca, cacert, server_cert, server_key, client, special, untrusted, client_pem)
