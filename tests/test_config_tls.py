"""The configuration keys of listeners, TLS (ssl_options) and authentication mechanisms, with
RabbitMQ's names; a bad value names its key and what is expected."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tlscerts import Certs

from hare.cli.config import ServeOptions, load_config
from hare.cli.main import _parser, serve_options


def load(tmp_path: Path, text: str) -> ServeOptions:
    f = tmp_path / "hare.conf"
    f.write_text(text)
    return load_config(f, ServeOptions())


def addresses(opts: ServeOptions, bind: str | None = None, port: int | None = None) -> list[tuple]:
    return [(li.host, li.port, li.tls is not None) for li in opts.net.listeners(bind, port)]


def tls_lines(certs: Certs) -> str:
    return (f"ssl_options.certfile = {certs.server_cert}\nssl_options.keyfile = {certs.server_key}\n"
            f"ssl_options.cacertfile = {certs.cacert}\n")


def test_several_tcp_and_ssl_listeners(tmp_path: Path, tls_certs: Certs) -> None:
    opts = load(tmp_path, "listeners.tcp.default = 5672\nlisteners.tcp.1 = 127.0.0.1:5673\n"
                          "listeners.tcp.local_v6 = ::1:5674\nlisteners.tcp.other = [::1]:5675\n"
                          "listeners.ssl.default = 5671\nlisteners.ssl.1 = [::]:5676\n"
                + tls_lines(tls_certs))
    assert addresses(opts) == [(None, 5672, False), ("127.0.0.1", 5673, False), ("::1", 5674, False),
                               ("::1", 5675, False), (None, 5671, True), ("::", 5676, True)]
    # --bind/--port replace the plain listeners by one; the TLS ones stay
    assert addresses(opts, "127.0.0.2", None) == [("127.0.0.2", 5672, False), (None, 5671, True),
                                                  ("::", 5676, True)]
    assert addresses(opts, None, 6000)[0] == (None, 6000, False)


def test_a_named_listener_replaces_the_default_one(tmp_path: Path) -> None:
    """As in RabbitMQ, listeners.tcp.local = 127.0.0.1:5672 alone means: only there."""
    assert addresses(load(tmp_path, "listeners.tcp.local = 127.0.0.1:5672\n")) == [("127.0.0.1", 5672, False)]
    assert addresses(load(tmp_path, "heartbeat = 5\n")) == [(None, 5672, False)]


def test_listeners_tcp_none_leaves_only_tls(tmp_path: Path, tls_certs: Certs) -> None:
    opts = load(tmp_path, "listeners.tcp = none\nlisteners.ssl.default = 5671\n" + tls_lines(tls_certs))
    assert addresses(opts) == [(None, 5671, True)]
    assert addresses(load(tmp_path, "listeners.tcp = none\n")) == []


@pytest.mark.parametrize(("line", "message"), [
    ("listeners.tcp.default = localhost", r"hare.conf:1: listeners.tcp.default: expected a port, "
                                          r"HOST:PORT or \[IPV6\]:PORT, not 'localhost'"),
    ("listeners.ssl.1 = 127.0.0.1:99999", r"listeners.ssl.1: expected a port, HOST:PORT"),
    ("listeners.tcp = 5672", r"listeners.tcp takes only 'none'"),
    ("ssl_options.verify = yes", r"ssl_options.verify must be verify_peer or verify_none, not 'yes'"),
    ("ssl_options.fail_if_no_peer_cert = 1", r"ssl_options.fail_if_no_peer_cert must be true or false"),
    ("ssl_options.versions.1 = tlsv1.1", r"ssl_options.versions.1 must be tlsv1.2 or tlsv1.3, not 'tlsv1.1'"),
    ("ssl_options.depth = two", r"ssl_options.depth must be a non-negative integer"),
    ("ssl_handshake_timeout = 0", r"ssl_handshake_timeout must be a positive number of milliseconds"),
    ("auth_mechanisms.1 = RABBIT-CR-DEMO", r"auth_mechanisms.1 must be one of PLAIN, AMQPLAIN, EXTERNAL"),
    ("ssl_cert_login_from = subject_alternative_name",
     r"ssl_cert_login_from must be distinguished_name or common_name, not 'subject_alternative_name'"),
])
def test_bad_values_name_the_key_and_what_is_expected(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(tmp_path, line + "\n")


def test_ssl_options_and_auth_mechanisms(tmp_path: Path, tls_certs: Certs) -> None:
    opts = load(tmp_path, "listeners.ssl.default = 5671\n" + tls_lines(tls_certs) +
                "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
                "ssl_options.versions.1 = tlsv1.3\nssl_options.versions.2 = tlsv1.2\n"
                "ssl_options.ciphers.1 = ECDHE-ECDSA-AES256-GCM-SHA384\n"
                "ssl_options.ciphers.2 = ECDHE-ECDSA-AES128-GCM-SHA256\nssl_options.depth = 2\n"
                "ssl_options.honor_cipher_order = true\nssl_handshake_timeout = 10000\n"
                "auth_mechanisms.1 = EXTERNAL\nauth_mechanisms.2 = PLAIN\n"
                "ssl_cert_login_from = common_name\n")
    t = opts.net.tls
    assert (t.verify, t.fail_if_no_peer_cert, t.versions, t.handshake_timeout, opts.net.depth) == (
        "verify_peer", True, ("tlsv1.3", "tlsv1.2"), 10.0, 2)
    assert t.ciphers == ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert (opts.broker.auth_mechanisms, opts.broker.ssl_cert_login_from) == (("EXTERNAL", "PLAIN"),
                                                                             "common_name")
    tls = opts.net.listeners()[1]
    assert tls.handshake_timeout == 10.0
    ctx = tls.tls
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    # the defaults: RabbitMQ's
    d = load(tmp_path, "listeners.ssl.default = 5671\n" + tls_lines(tls_certs))
    assert (d.broker.auth_mechanisms, d.broker.ssl_cert_login_from) == (("PLAIN", "AMQPLAIN"),
                                                                       "distinguished_name")
    ctx = d.net.listeners()[1].tls
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE
    assert d.net.listeners()[1].handshake_timeout == 5.0


def test_inconsistent_tls_options_are_refused_when_there_is_a_tls_listener(tmp_path: Path,
                                                                          tls_certs: Certs) -> None:
    with pytest.raises(ValueError, match="hare.conf: ssl_options.fail_if_no_peer_cert = true needs "
                                         "ssl_options.verify = verify_peer"):
        load(tmp_path, "listeners.ssl.default = 5671\n" + tls_lines(tls_certs) +
             "ssl_options.fail_if_no_peer_cert = true\n")
    with pytest.raises(ValueError, match="ssl_options.verify = verify_peer needs ssl_options.cacertfile"):
        load(tmp_path, f"listeners.ssl.default = 5671\nssl_options.certfile = {tls_certs.server_cert}\n"
                       "ssl_options.verify = verify_peer\n")
    # without a TLS listener they are not used, as in RabbitMQ
    load(tmp_path, "ssl_options.fail_if_no_peer_cert = true\n")


def test_unreadable_certificate_files_name_the_key(tmp_path: Path, tls_certs: Certs) -> None:
    opts = load(tmp_path, f"listeners.ssl.default = 5671\nssl_options.certfile = {tmp_path}/missing.pem\n")
    with pytest.raises(ValueError,
                       match=r"ssl_options.certfile/keyfile \(.*missing.pem, None\): cannot load"):
        opts.net.listeners()
    opts = load(tmp_path, "listeners.ssl.default = 5671\n" + tls_lines(tls_certs).replace(
        str(tls_certs.cacert), str(tls_certs.server_key)))
    with pytest.raises(ValueError, match=r"ssl_options.cacertfile \(.*server.key\): cannot load"):
        opts.net.listeners()
    opts = load(tmp_path, "listeners.ssl.default = 5671\n")
    with pytest.raises(ValueError, match="a TLS listener needs ssl_options.certfile"):
        opts.net.listeners()


def test_an_encrypted_key_with_its_password(tmp_path: Path, tls_certs: Certs) -> None:
    key = serialization.load_pem_private_key(tls_certs.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"s3cret")))
    base = (f"listeners.ssl.default = 5671\nssl_options.certfile = {tls_certs.server_cert}\n"
            f"ssl_options.keyfile = {encrypted}\n")
    assert load(tmp_path, base + "ssl_options.password = s3cret\n").net.listeners()[1].tls is not None
    with pytest.raises(ValueError, match="ssl_options.certfile/keyfile"):
        load(tmp_path, base + "ssl_options.password = wrong\n").net.listeners()


def test_unknown_ciphers_are_refused(tmp_path: Path, tls_certs: Certs) -> None:
    opts = load(tmp_path, "listeners.ssl.default = 5671\n" + tls_lines(tls_certs) +
                "ssl_options.ciphers.1 = ECDHE-ECDSA-AES256-GCM-SHA384\n"
                "ssl_options.ciphers.2 = NOPE-CIPHER\n")
    with pytest.raises(ValueError, match="ssl_options.ciphers: unknown cipher suite 'NOPE-CIPHER'"):
        opts.net.listeners()


def test_serve_flags_with_several_listeners(tmp_path: Path) -> None:
    f = tmp_path / "hare.conf"
    f.write_text("listeners.tcp.1 = 127.0.0.1:5673\nlisteners.tcp.2 = ::1:5674\n")
    opts = serve_options(_parser().parse_args(["serve", "--config", str(f)]))
    assert addresses(opts, opts.bind, opts.port) == [("127.0.0.1", 5673, False), ("::1", 5674, False)]
    opts = serve_options(_parser().parse_args(["serve", "--config", str(f), "--bind", "::1"]))
    assert addresses(opts, opts.bind, opts.port) == [("::1", 5673, False)]  # one listener, on --bind
