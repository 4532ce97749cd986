"""Policies without a server: matching, choosing, validation (RabbitMQ 3.10's texts, checked with
rabbitmqctl set_policy), the virtual host applying them, their storage and the definitions file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hare.broker.broker import Broker, BrokerConfig
from hare.broker.message import Message
from hare.broker.policies import Policy, PolicyError, choose, erl, for_exchange, for_queue, make_policy
from hare.broker.vhost import VirtualHost
from hare.cli.config import ServeOptions, load_config
from hare.store.definitions import Definitions


def policy(name: str, pattern: str, priority: int = 0, apply_to: str = "all", **definition: object) -> Policy:
    return make_policy("/", name, pattern, definition or {"max-length": 1}, priority, apply_to)


# -- matching and choosing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("orders", "my-orders-2", True),  # searched, not anchored
    ("^orders", "my-orders", False),
    ("^orders$", "orders", True),
    ("^orders$", "orders-2", False),
    ("", "anything", True),
    ("", "", True),
    ("Abc", "abc", False),  # case-sensitive
    (r"^amq\.gen", "amq.gen-xyz", True),
    ("^a.c$", "a.c", True),
    ("(?<k>a)b", "ab", True),  # PCRE's named group syntax
])
def test_the_pattern_is_searched_in_the_name(pattern: str, name: str, matches: bool) -> None:
    p = policy("p", pattern)
    assert p.applies_to_queue(name) is matches
    assert p.applies_to_exchange(name) is matches


def test_apply_to() -> None:
    q, x, a = policy("q", "", apply_to="queues"), policy("x", "", apply_to="exchanges"), policy("a", "")
    assert (q.applies_to_queue("n"), q.applies_to_exchange("n")) == (True, False)
    assert (x.applies_to_queue("n"), x.applies_to_exchange("n")) == (False, True)
    assert (a.applies_to_queue("n"), a.applies_to_exchange("n")) == (True, True)
    classic = policy("c", "", apply_to="classic_queues")
    quorum = policy("qq", "", apply_to="quorum_queues")
    streams = policy("s", "", apply_to="streams")
    assert for_queue([classic, quorum, streams], "n", {}) is classic
    assert for_queue([classic, quorum, streams], "n", {"x-queue-type": "classic"}) is classic
    assert for_queue([classic, quorum, streams], "n", {"x-queue-type": "quorum"}) is quorum
    assert for_queue([classic, quorum, streams], "n", {"x-queue-type": "stream"}) is streams
    assert for_exchange([classic, quorum, streams], "n") is None


def test_the_highest_priority_wins_and_ties_go_to_the_first_name() -> None:
    low, high = policy("low", "", 1), policy("high", "^q", 5)
    other = policy("other", "^x", 9)
    assert for_queue([low, high, other], "q1", {}) is high
    assert for_queue([low, high, other], "z", {}) is low
    assert for_queue([other], "q1", {}) is None
    b, a, c = policy("b", ""), policy("a", ""), policy("c", "")
    assert choose([b, a, c], lambda p: True) is a
    assert choose([b, c], lambda p: True) is b
    assert policy("neg", "", -3).priority == -3


def test_a_policy_shadows_lower_ones_whatever_its_keys() -> None:
    # apply-to all with queue keys only still is *the* policy of a matching exchange
    queue_only = policy("q", "", 5, **{"max-length": 1})
    ae = policy("ae", "", 1, **{"alternate-exchange": "alt"})
    assert for_exchange([queue_only, ae], "x") is queue_only


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("definition", "text"), [
    ({"max-length": "x"}, '<<"x">> is not a valid maximum length'),
    ({"max-length": -1}, "-1 is not a valid maximum length"),
    ({"max-length": True}, "true is not a valid maximum length"),
    ({"max-length": 1.0}, "1.0 is not a valid maximum length"),
    ({"max-length": 1000.0}, "1.0e3 is not a valid maximum length"),
    ({"message-ttl": "x"}, '<<"x">> is not a valid message TTL'),
    ({"message-ttl": 1.5}, "1.5 is not a valid message TTL"),
    ({"expires": 0}, "0 is not a valid queue expiry"),
    ({"max-length-bytes": "x"}, '<<"x">> is not a valid maximum length in bytes'),
    ({"overflow": "bogus"}, '<<"bogus">> is not a valid overflow value'),
    ({"overflow": 1}, "1 is not a valid overflow value"),
    ({"dead-letter-exchange": 1}, "1 is not a valid dead letter exchange name"),
    ({"dead-letter-routing-key": 5}, "5 is not a valid dead letter routing key"),
    ({"delivery-limit": -1}, "-1 is not a valid delivery limit"),
    ({"alternate-exchange": 1}, "1 is not a valid alternate exchange name"),
    ({"foo": 1}, '[{<<"foo">>,1}] are not recognised policy settings'),
    ({"foo": 1, "bar": 2}, '[{<<"bar">>,2},{<<"foo">>,1}] are not recognised policy settings'),
    ({"foo": 1, "max-length": "x"}, '<<"x">> is not a valid maximum length'),  # values first
    ({"max-length": "x", "expires": "y"}, '<<"y">> is not a valid queue expiry'),  # in key order
    ({}, "no policy provided"),
    ({"queue-mode": "x"}, '<<"x">> is not a valid queue-mode value'),
    ({"ha-params": 2}, "ha-mode must be specified to specify ha-params, ha-sync-mode or "
                       "ha-promote-on-shutdown"),
    ({"ha-mode": "x"}, '<<"x">> is not a valid ha-mode value'),
    ({"ha-mode": "exactly"}, 'ha-mode="exactly" takes an integer, none given'),
    ({"ha-mode": "all", "ha-params": 2}, 'ha-mode="all" does not take parameters'),
    ({"ha-mode": "x", "message-ttl": "y"}, '<<"y">> is not a valid message TTL'),
    ({"max-in-memory-length": -1}, "-1 is not a valid maximum memory in bytes"),
    ({"queue-master-locator": "x"}, '<<"x">> invalid queue-master-locator value'),
    ({"max-age": "5x"}, '<<"5x">> is not a valid max age'),
    ({"queue-version": 3}, "3 is not a valid queue-version value"),
    ({"dead-letter-strategy": "x"}, '<<"x">> is not a valid dead letter strategy'),
])
def test_definitions_are_validated_with_rabbitmq_texts(definition: dict, text: str) -> None:
    with pytest.raises(PolicyError) as info:
        make_policy("/", "p", "", definition)
    assert str(info.value) == text


@pytest.mark.parametrize("definition", [
    {"message-ttl": 0}, {"max-length": 0}, {"dead-letter-exchange": ""}, {"delivery-limit": 0},
    {"alternate-exchange": ""}, {"message-ttl": 4294967296}, {"overflow": "reject-publish-dlx"},
    {"queue-mode": "lazy", "ha-mode": "all", "ha-sync-mode": "automatic"},
    {"ha-mode": "exactly", "ha-params": 2}, {"max-age": "1D"}, {"consumer-timeout": 60000},
    {"queue-version": 2}, {"dead-letter-strategy": "at-least-once"},
])
def test_valid_definitions(definition: dict) -> None:
    assert make_policy("/", "p", "", definition).definition == definition


def test_a_long_list_of_unknown_settings_wraps_as_erlang_prints_it() -> None:
    text = erl([("a" * 30, 1), ("b" * 30, 2)])
    assert text == '[{<<"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">>,1},\n {<<"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb">>,2}]'


@pytest.mark.parametrize(("pattern", "text"), [
    ("(", '{"missing )",1}'),
    ("[a", '{"missing terminating ] for character class",\n' + " " * 54 + "2}"),
    (")", '{"unmatched parentheses",\n' + " " * 54 + "0}"),
    ("a{2,1}", '{"numbers out of order in {} quantifier",\n' + " " * 54 + "5}"),
])
def test_an_invalid_pattern(pattern: str, text: str) -> None:
    with pytest.raises(PolicyError) as info:
        make_policy("/", "p", pattern, {"max-length": 1})
    assert str(info.value) == "pattern should be regular expression but is invalid: " + text


def test_apply_to_and_priority_are_checked() -> None:
    with pytest.raises(PolicyError, match="apply-to 'bogus' unrecognised; should be one of: 'queues'"):
        make_policy("/", "p", "", {"max-length": 1}, apply_to="bogus")
    with pytest.raises(PolicyError, match="priority must be a number"):
        make_policy("/", "p", "", {"max-length": 1}, priority="x")
    with pytest.raises(PolicyError, match=r"definition must be a dictionary: \[1\]"):
        make_policy("/", "p", "", [1])


@pytest.mark.parametrize(("value", "text"), [
    (1000.0, "1.0e3"), (100.0, "100.0"), (1.5, "1.5"), (0.0001, "0.0001"), (12345.0, "12345.0"),
    (1e20, "1.0e20"), (5e-06, "5.0e-6"), (10000.0, "1.0e4"), (-1000.0, "-1.0e3"), (0.0, "0.0"),
])
def test_floats_print_as_erlang_prints_them(value: float, text: str) -> None:
    assert erl(value) == text


# -- a virtual host applying them ---------------------------------------------------------------------


def _fill(vhost: VirtualHost, queue: str, n: int) -> None:
    q = vhost.queues[queue]
    for i in range(n):
        q.publish(Message("", queue, b"\x00\x00", str(i).encode()))


def test_set_and_clear_apply_at_once_and_new_queues_get_theirs() -> None:
    vhost = VirtualHost("/")
    q = vhost.declare_queue("q1", arguments={"x-message-ttl": 1000})
    _fill(vhost, "q1", 5)
    vhost.set_policy("limit", "^q", {"max-length": 2, "message-ttl": 50000})
    assert q.message_count == 2 and q.settings.max_length == 2
    assert q.settings.message_ttl == 1000  # the lower of argument and policy
    assert vhost.policy_for_queue(q) is not None
    q2 = vhost.declare_queue("q2")
    assert q2.settings.max_length == 2
    vhost.set_policy("limit", "^q", {"max-length": 3})  # replace
    assert q.settings.max_length == 3 and q.settings.message_ttl == 1000
    assert vhost.clear_policy("limit") is True
    assert q.settings.max_length is None and q2.policy is None
    assert vhost.clear_policy("limit") is False
    assert vhost.policies() == []


def test_the_alternate_exchange_comes_from_the_argument_else_the_policy() -> None:
    vhost = VirtualHost("/")
    plain = vhost.declare_exchange("plain", "direct")
    own = vhost.declare_exchange("own", "direct", arguments={"alternate-exchange": "mine"})
    vhost.set_policy("ae", "", {"alternate-exchange": "alt"}, apply_to="exchanges")
    assert (plain.alternate_exchange, own.alternate_exchange) == ("alt", "mine")
    assert vhost.declare_exchange("later", "topic").alternate_exchange == "alt"
    assert vhost.default_exchange.alternate_exchange is None
    vhost.clear_policy("ae")
    assert (plain.alternate_exchange, own.alternate_exchange) == (None, "mine")


def test_policies_are_kept_in_the_definitions(tmp_path: Path) -> None:
    defs = Definitions(tmp_path / "d.sqlite3")
    defs.add_policy("/", "p", "^q", "queues", 3, {"max-length": 1, "dead-letter-exchange": "dlx"})
    defs.add_policy("/", "é", "", "all", -1, {"message-ttl": 5})
    defs.add_policy("/v", "p", "", "all", 0, {"expires": 5})
    defs.remove_policy("/v", "p")
    assert defs.policies("/") == [("p", "^q", "queues", 3, {"max-length": 1, "dead-letter-exchange": "dlx"}),
                                  ("é", "", "all", -1, {"message-ttl": 5})]
    assert defs.policies("/v") == []
    defs.close()


def test_policies_survive_a_restart(tmp_path: Path) -> None:
    broker = Broker(data_dir=tmp_path)
    vhost = broker.vhosts["/"]
    broker.commands.declare_queue(vhost, "dq", durable=True)
    broker.commands.set_policy(vhost, "p", "^dq$", {"max-length": 7}, priority=2, apply_to="queues")
    broker.close()
    broker = Broker(data_dir=tmp_path)
    vhost = broker.vhosts["/"]
    assert [(p.name, p.priority, p.apply_to) for p in vhost.policies()] == [("p", 2, "queues")]
    assert vhost.queues["dq"].settings.max_length == 7
    broker.close()


# -- the definitions file (load_definitions) --------------------------------------------------------


def test_load_definitions_applies_rabbitmq_export_format(tmp_path: Path) -> None:
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps({
        "rabbit_version": "3.10.8",
        "users": [{"name": "app", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"]}],
        "vhosts": [{"name": "/"}, {"name": "other"}],
        "permissions": [{"user": "app", "vhost": "other", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": "/", "name": "ttl", "pattern": "^jobs\\.", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 1},
                     {"vhost": "other", "name": "ae", "pattern": "^in$", "apply-to": "exchanges",
                      "definition": {"alternate-exchange": "unrouted"}, "priority": 0}],
        "queues": [{"name": "jobs.a", "vhost": "/", "durable": True, "auto_delete": False,
                    "arguments": {"x-max-length": 10}}],
        "exchanges": [{"name": "in", "vhost": "other", "type": "topic", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "bindings": [{"source": "amq.direct", "vhost": "/", "destination": "jobs.a",
                      "destination_type": "queue", "routing_key": "a", "arguments": {}}],
    }))
    broker = Broker(BrokerConfig(load_definitions=str(path)), data_dir=tmp_path / "data")
    root, other = broker.vhosts["/"], broker.vhosts["other"]
    q = root.queues["jobs.a"]
    assert (q.settings.message_ttl, q.settings.max_length, q.durable) == (60000, 10, True)
    assert other.exchanges["in"].alternate_exchange == "unrouted"
    assert root.exchanges["amq.direct"].has_binding(q, "a", {})
    assert broker.users.users["app"].vhosts == {"other"}
    broker.close()
    # applied again at the next start, over what was kept: no error, nothing doubled
    broker = Broker(BrokerConfig(load_definitions=str(path)), data_dir=tmp_path / "data")
    assert [p.name for p in broker.vhosts["/"].policies()] == ["ttl"]
    broker.close()


def test_an_invalid_definitions_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps({"policies": [{"vhost": "/", "name": "bad", "pattern": "",
                                              "definition": {"max-length": "x"}}]}))
    with pytest.raises(ValueError, match=r"policy 'bad': Validation failed: <<\"x\">> is not a valid"):
        Broker(BrokerConfig(load_definitions=str(path)))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot load definitions"):
        Broker(BrokerConfig(load_definitions=str(path)))


def test_the_config_file_names_the_definitions_file(tmp_path: Path) -> None:
    f = tmp_path / "hare.conf"
    f.write_text("load_definitions = /etc/hare/definitions.json\n")
    assert load_config(f, ServeOptions()).broker.load_definitions == "/etc/hare/definitions.json"
    f.write_text("definitions.import_backend = local_filesystem\ndefinitions.local.path = /d.json\n")
    assert load_config(f, ServeOptions()).broker.load_definitions == "/d.json"
