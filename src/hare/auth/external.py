"""SASL EXTERNAL: the user name taken from the client's verified TLS certificate, as RabbitMQ's
rabbitmq_auth_mechanism_ssl takes it (``ssl_cert_login_from``):

- ``distinguished_name`` (RabbitMQ's default): the certificate's subject as an RFC 4514 string,
  most specific part first, RabbitMQ's way: ``CN=app,O=Example,C=SE``;
- ``common_name``: the subject's CN (several CNs joined with ``,``).

The certificate is the one ``ssl.SSLSocket.getpeercert()`` returns (a dict).
"""

from __future__ import annotations

from typing import Any

LOGIN_FROM = ("distinguished_name", "common_name")

# OpenSSL's long attribute names (as getpeercert() gives them) -> RabbitMQ's short ones
_SHORT = {"surname": "SN", "givenName": "GIVENNAME", "initials": "INITIALS",
          "generationQualifier": "GENERATIONQUALIFIER", "commonName": "CN", "localityName": "L",
          "stateOrProvinceName": "ST", "organizationName": "O", "organizationalUnitName": "OU",
          "title": "TITLE", "countryName": "C", "serialNumber": "SERIALNUMBER", "pseudonym": "PSEUDONYM",
          "domainComponent": "DC", "emailAddress": "EMAILADDRESS", "streetAddress": "STREET",
          "userId": "UID"}
_SPECIAL = frozenset(b'"+,;<>\\')


def escape_rdn_value(value: str) -> str:
    """RabbitMQ's RFC 4514 escaping: a leading space or ``#``, a trailing space and ``"+,;<>\\``
    get a backslash; octets under 32 or from 126 up (so every non-ASCII character's UTF-8 octets)
    are written ``\\XX``."""
    data = value.encode("utf-8")
    out = []
    for i, c in enumerate(data):
        if i == 0 and c in (0x20, 0x23) or i == len(data) - 1 and c == 0x20 and i > 0 or c in _SPECIAL:
            out.append("\\" + chr(c))
        elif c < 32 or c >= 126:
            out.append(f"\\{c:02X}")
        else:
            out.append(chr(c))
    return "".join(out)


def distinguished_name(cert: dict[str, Any]) -> str:
    rdns = cert.get("subject", ())
    return ",".join("+".join(f"{_SHORT.get(name, name)}={escape_rdn_value(value)}" for name, value in rdn)
                    for rdn in reversed(rdns))


def user_name(cert: dict[str, Any] | None, login_from: str) -> tuple[str | None, str]:
    """(user name, "") or (None, why there is none) in RabbitMQ's words."""
    if not cert:
        return None, "connection peer presented no TLS (x.509) certificate"
    if login_from == "common_name":
        cns = [value for rdn in cert.get("subject", ()) for name, value in rdn if name == "commonName"]
        if not cns:
            return None, "no name found"
        return ",".join(cns), ""
    return distinguished_name(cert), ""
