"""The rabbitmq.conf-style configuration file and the `hare serve` options."""

from __future__ import annotations

from pathlib import Path

import pytest

from hare.cli.config import ServeOptions, load_config
from hare.cli.main import _parser, serve_options


def test_config_file_sets_listener_users_and_tuning(tmp_path: Path) -> None:
    f = tmp_path / "hare.conf"
    f.write_text("# comment\nlisteners.tcp.default = 127.0.0.1:5673\ndefault_user = app\n"
                 "default_pass = s3cret\nloopback_users = none\nheartbeat = 30  # trailing\n"
                 "frame_max = 65536\nchannel_max = 100\ndata_dir = /tmp/x\n")
    opts = load_config(f, ServeOptions())
    assert [(li.host, li.port) for li in opts.net.listeners()] == [("127.0.0.1", 5673)]
    assert opts.data_dir == "/tmp/x"
    b = opts.broker
    assert (b.default_user, b.default_pass, b.heartbeat, b.frame_max, b.channel_max) == (
        "app", "s3cret", 30, 65536, 100)
    assert b.loopback_users == ()


def test_unknown_key_is_an_error_naming_the_line(tmp_path: Path) -> None:
    f = tmp_path / "hare.conf"
    f.write_text("heartbeat = 10\nheartbeet = 10\n")
    with pytest.raises(ValueError, match=r"hare.conf:2: unknown setting 'heartbeet'"):
        load_config(f, ServeOptions())


def test_flags_override_the_file_and_defaults_match_the_issue(tmp_path: Path) -> None:
    defaults = serve_options(_parser().parse_args(["serve"]))
    # every interface, IPv4 and IPv6, as RabbitMQ (issue 9; was 0.0.0.0)
    assert [(li.host, li.port, li.tls) for li in defaults.net.listeners(defaults.bind, defaults.port)] == [
        (None, 5672, None)]
    assert (defaults.http_port, defaults.data_dir) == (15672, "./hare-data")
    f = tmp_path / "hare.conf"
    f.write_text("listeners.tcp.default = 127.0.0.1:5673\n")
    opts = serve_options(_parser().parse_args(["serve", "--config", str(f), "--port", "5999"]))
    assert [(li.host, li.port) for li in opts.net.listeners(opts.bind, opts.port)] == [("127.0.0.1", 5999)]


@pytest.mark.parametrize(("value", "limit"), [("50000000", 50_000_000), ("50MB", 50_000_000),
                                              ("2GiB", 2 << 30), ("512kB", 512_000), ("1 gb", 10**9)])
def test_disk_free_limit_takes_rabbitmq_sizes(tmp_path: Path, value: str, limit: int) -> None:
    f = tmp_path / "hare.conf"
    f.write_text(f"disk_free_limit.absolute = {value}\n")
    assert load_config(f, ServeOptions()).broker.disk_free_limit == limit


def test_disk_free_limit_default_is_rabbitmqs_and_garbage_is_refused(tmp_path: Path) -> None:
    assert ServeOptions().broker.disk_free_limit == 50_000_000
    f = tmp_path / "hare.conf"
    f.write_text("disk_free_limit.absolute = lots\n")
    with pytest.raises(ValueError, match="hare.conf:1: not a size"):
        load_config(f, ServeOptions())
