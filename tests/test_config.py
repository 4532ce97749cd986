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
    assert (opts.bind, opts.port, opts.data_dir) == ("127.0.0.1", 5673, "/tmp/x")
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
    assert (defaults.bind, defaults.port, defaults.http_port, defaults.data_dir) == (
        "0.0.0.0", 5672, 15672, "./hare-data")
    f = tmp_path / "hare.conf"
    f.write_text("listeners.tcp.default = 5673\n")
    opts = serve_options(_parser().parse_args(["serve", "--config", str(f), "--port", "5999"]))
    assert opts.port == 5999


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


def _load(tmp_path: Path, text: str) -> ServeOptions:
    f = tmp_path / "hare.conf"
    f.write_text(text)
    return load_config(f, ServeOptions())


def test_limits_and_alarms_keys(tmp_path: Path) -> None:
    b = ServeOptions().broker  # RabbitMQ's defaults
    assert (b.vm_memory_high_watermark, b.vm_memory_high_watermark_absolute,
            b.total_memory_available_override_value, b.handshake_timeout, b.connection_max) == (
        0.4, None, None, 10_000, None)
    b = _load(tmp_path, "vm_memory_high_watermark.absolute = 512MiB\nhandshake_timeout = 2500\n"
                        "connection_max = 100\ntotal_memory_available_override_value = 2GB\n"
                        "max_message_size = 536870912\n").broker
    assert (b.vm_memory_high_watermark_absolute, b.total_memory_available_override_value,
            b.handshake_timeout, b.connection_max, b.max_message_size) == (
        512 << 20, 2 * 10**9, 2500, 100, 512 << 20)
    b = _load(tmp_path, "vm_memory_high_watermark.relative = 0.6\nhandshake_timeout = infinity\n"
                        "connection_max = infinity\n").broker
    assert (b.vm_memory_high_watermark, b.handshake_timeout, b.connection_max) == (0.6, None, None)


@pytest.mark.parametrize(("value", "size"), [("1073741824", 1 << 30), ("1GB", 10**9), ("1G", 1 << 30),
                                             ("1024k", 1 << 20), ("100MB", 10**8), ("100M", 100 << 20)])
def test_absolute_watermark_takes_rabbitmq_units(tmp_path: Path, value: str, size: int) -> None:
    b = _load(tmp_path, f"vm_memory_high_watermark.absolute = {value}\n").broker
    assert b.vm_memory_high_watermark_absolute == size


def test_relative_watermark_wins_over_absolute_as_in_rabbitmq(tmp_path: Path) -> None:
    for text in ("vm_memory_high_watermark.relative = 0.5\nvm_memory_high_watermark.absolute = 1GB\n",
                 "vm_memory_high_watermark.absolute = 1GB\nvm_memory_high_watermark.relative = 0.5\n"):
        b = _load(tmp_path, text).broker
        assert (b.vm_memory_high_watermark, b.vm_memory_high_watermark_absolute) == (0.5, None)


@pytest.mark.parametrize(("line", "error"), [
    ("vm_memory_high_watermark.relative = 1.5", "vm_memory_high_watermark.relative must be a fraction"),
    ("vm_memory_high_watermark.relative = lots", "vm_memory_high_watermark.relative must be a fraction"),
    ("vm_memory_high_watermark.absolute = 1 TB", "vm_memory_high_watermark.absolute must be a size"),
    ("total_memory_available_override_value = x", "total_memory_available_override_value must be a size"),
    ("handshake_timeout = 0", "handshake_timeout must be an integer of at least 1, or infinity"),
    ("handshake_timeout = 10s", "handshake_timeout must be an integer of at least 1, or infinity"),
    ("connection_max = -1", "connection_max must be an integer of at least 0, or infinity"),
    ("max_message_size = 536870913", "max_message_size must be between 1 and 536870912"),
    ("max_message_size = 0", "max_message_size must be between 1 and 536870912"),
])
def test_limit_keys_refuse_bad_values_naming_the_key(tmp_path: Path, line: str, error: str) -> None:
    with pytest.raises(ValueError, match=f"hare.conf:1: {error}"):
        _load(tmp_path, line + "\n")
