"""The rabbitmq.conf-style configuration file and the `hare serve` options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hare.broker.broker import Broker
from hare.cli.config import ENVIRONMENT, ServeOptions, load_config, total_memory
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
    with pytest.raises(ValueError, match=r"hare.conf:1: disk_free_limit.absolute: expected a size in "
                                         r"bytes \(50000000, 50MB, 1GiB\), got 'lots'$"):
        load_config(f, ServeOptions())


def _load(tmp_path: Path, text: str) -> ServeOptions:
    f = tmp_path / "hare.conf"
    f.write_text(text)
    return load_config(f, ServeOptions())


@pytest.mark.parametrize(("line", "message"), [
    ("heartbeat = abc", "heartbeat: expected a non-negative integer, got 'abc'"),
    ("frame_max = -1", "frame_max: expected a non-negative integer, got '-1'"),
    ("channel_max = 2k", "channel_max: expected a non-negative integer, got '2k'"),
    ("listeners.tcp.default = localhost", "listeners.tcp.default: expected a port, HOST:PORT or "
                                          "[IPV6]:PORT, not 'localhost'"),
    ("management.tcp.port = 99999", "management.tcp.port: expected a port number (0-65535), got '99999'"),
    ("loopback_users.guest = maybe", "loopback_users.guest: expected true or false, got 'maybe'"),
    ("log.file.level = loud", "log.file.level: expected one of debug, info, notice, warning, error, "
                              "critical, none, got 'loud'"),
    ("log.console.formatter = xml", "log.console.formatter: expected plaintext or json, got 'xml'"),
    ("log.console = sometimes", "log.console: expected true or false, got 'sometimes'"),
    ("disk_free_limit.relative = half", "disk_free_limit.relative: expected a non-negative number (a "
                                        "fraction of the total RAM), got 'half'"),
    ("default_permissions.read = [", "default_permissions.read: expected a regular expression, got '['"),
    ("default_user_tags.monitoring = yes please", "default_user_tags.monitoring: expected true or false"),
])
def test_a_bad_value_names_the_key_and_what_is_expected(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        _load(tmp_path, f"# first\n{line}\n")
    assert str(info.value).startswith(f"{tmp_path / 'hare.conf'}:2: {message}")
    assert "invalid literal" not in str(info.value)


def test_rabbitmq_keys_hare_ignores_are_warnings_one_per_key(tmp_path: Path) -> None:
    lines = ["cluster_partition_handling = autoheal", "collect_statistics_interval = 10000",
             "vm_memory_high_watermark_paging_ratio = 0.6", "log.file.rotation.count = 5",
             "cluster_formation.peer_discovery_backend = classic_config",
             "cluster_formation.classic_config.nodes.1 = rabbit@a", "management.tcp.ip = 0.0.0.0",
             "mqtt.listeners.tcp.default = 1883", "prometheus.tcp.port = 15692",
             "default_users.admin.password = x", "log.connection.level = debug"]
    opts = _load(tmp_path, "\n".join(lines) + "\nheartbeat = 5\n")
    assert opts.broker.heartbeat == 5
    assert len(opts.warnings) == len(lines)
    for n, (line, warning) in enumerate(zip(lines, opts.warnings, strict=True), 1):
        key = line.split(" =")[0]
        assert warning == (f"{tmp_path / 'hare.conf'}:{n}: {key} is a RabbitMQ setting hare does not act "
                           "on; ignored")


@pytest.mark.parametrize(("key", "hint"), [
    ("heartbeet", " (did you mean 'heartbeat'?)"), ("log.fiel.level", ""),
    ("cluster_nam", " (did you mean 'cluster_name'?)"), ("listeners.tcp.default.port", ""),
    ("ssl_options", None)])
def test_a_key_nobody_knows_is_an_error_naming_file_line_and_key(tmp_path: Path, key: str, hint: Any) -> None:
    if hint is None:  # "ssl_options = none" is RabbitMQ's own: accepted with a warning
        assert len(_load(tmp_path, f"{key} = none\n").warnings) == 1
        return
    with pytest.raises(ValueError) as info:
        _load(tmp_path, f"heartbeat = 10\n{key} = 1\n")
    assert str(info.value).startswith(f"{tmp_path / 'hare.conf'}:2: unknown setting {key!r}")
    if hint:
        assert str(info.value).endswith(hint)


def test_default_user_tags_and_permissions_are_kept_for_the_default_user(tmp_path: Path) -> None:
    assert ServeOptions().broker.default_user_tags == ("administrator",)
    assert ServeOptions().broker.default_permissions == (".*", ".*", ".*")
    opts = _load(tmp_path, "default_user_tags.monitoring = true\ndefault_user_tags.management = true\n"
                           "default_user_tags.policymaker = false\ndefault_permissions.configure = ^$\n"
                           "default_permissions.read = ^app\\.\ndefault_permissions.write = ^app-out$\n")
    assert opts.broker.default_user_tags == ("monitoring", "management")  # the file's list replaces
    assert opts.broker.default_permissions == ("^$", "^app-out$", r"^app\.")  # configure, write, read
    assert opts.warnings == []
    # and the default user is created with them
    broker = Broker(opts.broker)
    guest = broker.users.users["guest"]
    assert guest.tags == ["monitoring", "management"]
    assert guest.permissions["/"].as_json() == {"configure": "^$", "write": "^app-out$", "read": r"^app\."}


def test_disk_free_limit_relative_is_a_fraction_of_the_total_ram(tmp_path: Path) -> None:
    ram = total_memory()
    assert ram > 1 << 26
    assert _load(tmp_path, "disk_free_limit.relative = 1.5\n").broker.disk_free_limit == int(1.5 * ram)
    assert _load(tmp_path, "disk_free_limit.relative = 1\n").broker.disk_free_limit == ram


def test_log_settings(tmp_path: Path) -> None:
    opts = _load(tmp_path, "log.file = /var/log/hare.log\nlog.file.level = debug\nlog.file.formatter = json\n"
                           "log.console = false\nlog.console.level = warning\n")
    log = opts.log
    assert (log.file, log.file_level, log.file_formatter) == ("/var/log/hare.log", "debug", "json")
    assert (log.console, log.console_level, log.console_formatter) == (False, "warning", "plaintext")
    assert _load(tmp_path, "log.file = false\n").log.file is None


def _serve(argv: list[str], env: dict[str, str], conf: str | None = None,
           tmp_path: Path | None = None) -> ServeOptions:
    if conf is not None:
        assert tmp_path is not None
        f = tmp_path / "hare.conf"
        f.write_text(conf)
        env = {**env, "HARE_CONFIG_FILE": str(f)}
    return serve_options(_parser().parse_args(["serve", *argv]), env)


def _plain(opts: ServeOptions) -> list[tuple[str | None, int]]:
    """The plain AMQP listeners ``hare serve`` would open with these options."""
    return [(x.host, x.port) for x in opts.net.listeners(opts.bind, opts.port) if x.tls is None]


def test_environment_sets_the_common_settings() -> None:
    opts = _serve([], {"HARE_NODE_PORT": "5999", "HARE_NODE_IP_ADDRESS": "127.0.0.2", "HARE_DATA_DIR": "/d",
                       "HARE_LOG_LEVEL": "debug", "HARE_DEFAULT_USER": "app", "HARE_DEFAULT_PASS": "pw",
                       "HARE_DEFAULT_VHOST": "v", "HARE_MANAGEMENT_PORT": "15999", "HARE_LOG_FILE": "/l.log"})
    assert (opts.port, opts.bind, opts.data_dir, opts.log_level, opts.http_port, opts.log.file) == (
        5999, "127.0.0.2", "/d", "debug", 15999, "/l.log")
    b = opts.broker
    assert (b.default_user, b.default_pass, b.default_vhost) == ("app", "pw", "v")
    assert opts.management_requested
    assert not _serve([], {"HARE_NODE_PORT": ""}).management_requested  # empty: unset
    assert _plain(_serve([], {"HARE_NODE_PORT": ""})) == [(None, 5672)]
    assert set(ENVIRONMENT) == {"HARE_CONFIG_FILE", "HARE_NODE_IP_ADDRESS", "HARE_NODE_PORT",
                                "HARE_MANAGEMENT_PORT", "HARE_DATA_DIR", "HARE_LOG_LEVEL", "HARE_LOG_FILE",
                                "HARE_DEFAULT_USER", "HARE_DEFAULT_PASS", "HARE_DEFAULT_VHOST"}


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    conf = "listeners.tcp.default = 127.0.0.1:5801\ndefault_user = file-user\nlog.console.level = error\n"
    from_file = _serve([], {}, conf, tmp_path)
    assert (_plain(from_file), from_file.broker.default_user) == ([("127.0.0.1", 5801)], "file-user")
    assert (from_file.log_level, from_file.log.console_level) == ("info", "error")
    env = {"HARE_NODE_PORT": "5802", "HARE_DEFAULT_USER": "env-user", "HARE_LOG_LEVEL": "debug"}
    from_env = _serve([], env, conf, tmp_path)
    assert (_plain(from_env), from_env.broker.default_user) == ([("127.0.0.1", 5802)], "env-user")
    assert (from_env.log_level, from_env.log.console_level) == ("debug", None)  # over the file's level
    from_flag = _serve(["--port", "5803", "--log-level", "warning"], env, conf, tmp_path)
    assert (_plain(from_flag), from_flag.broker.default_user, from_flag.log_level) == (
        [("127.0.0.1", 5803)], "env-user", "warning")
    f = tmp_path / "other.conf"
    f.write_text("listeners.tcp.default = 5804\n")
    assert _plain(_serve(["--config", str(f)], {"HARE_CONFIG_FILE": str(tmp_path / "none.conf")})) == [
        (None, 5804)]


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^environment variable HARE_NODE_PORT: expected a port number "
                                         r"\(0-65535\), got 'amqp'$"):
        _serve([], {"HARE_NODE_PORT": "amqp"})
    with pytest.raises(ValueError, match="^environment variable HARE_LOG_LEVEL: expected one of debug"):
        _serve([], {"HARE_LOG_LEVEL": "chatty"})
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
