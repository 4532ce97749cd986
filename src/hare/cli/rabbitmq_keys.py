"""The rabbitmq.conf keys RabbitMQ documents (its core schema, ``deps/rabbit/priv/schema``, 3.10 to
4.x, and its plugins' schemas), so that ``hare serve`` can tell a RabbitMQ setting it does not act
on (a warning) from a typo (an error).

One pattern per line. A pattern ending in ``.`` is a family: every key under it (``ssl_options.``
takes ``ssl_options.versions.1``). Otherwise the key must match segment by segment, ``*`` standing
for one segment (a name RabbitMQ lets the user choose: ``listeners.ssl.*``). Keys hare acts on are
handled by ``config.load_config`` before this table is consulted; they may be listed here too.
"""

from __future__ import annotations

from functools import cache

_PATTERNS = """
# networking
listeners.tcp
listeners.tcp.*
listeners.ssl
listeners.ssl.*
num_acceptors.tcp
num_acceptors.ssl
tcp_listen_options
tcp_listen_options.
socket_writer.gc_threshold
handshake_timeout
ssl_handshake_timeout
reverse_dns_lookups
proxy_protocol
erlang.K
distribution.listener.
net_ticktime
# TLS
ssl_options
ssl_options.
ssl_allow_poodle_attack
ssl_cert_login_from
ssl_cert_login_san_type
ssl_cert_login_san_index
amqp_client.ssl_options
amqp_client.ssl_options.
amqp10_client.ssl_options
amqp10_client.ssl_options.
# definitions
load_definitions
definitions.import_backend
definitions.local.path
definitions.skip_if_unchanged
definitions.hashing.algorithm
definitions.https.url
definitions.tls.
# users, authentication, access control
default_user
default_pass
default_vhost
default_user_tags.*
default_permissions.configure
default_permissions.read
default_permissions.write
default_users.
default_limits.vhosts.
default_policies.operator.
anonymous_login_user
anonymous_login_pass
loopback_users
loopback_users.*
auth_mechanisms.*
auth_backends.
password_hashing_module
credential_validator.
# limits and tuning
heartbeat
frame_max
initial_frame_max
channel_max
channel_max_per_node
max_channels_per_connection
consumer_max_per_channel
session_max_per_connection
link_max_per_session
connection_max
ranch_connection_max
max_connections
vhost_max
cluster_queue_limit
cluster_exchange_limit
max_message_size
consumer_timeout
consumer_disconnected_timeout
runtime_parameters.limits.
# resources
vm_memory_high_watermark.relative
vm_memory_high_watermark.absolute
vm_memory_high_watermark_paging_ratio
vm_memory_calculation_strategy
memory_monitor_interval
total_memory_available_override_value
disk_free_limit.relative
disk_free_limit.absolute
# statistics, background work
collect_statistics
collect_statistics_interval
background_gc_enabled
background_gc_target_interval
delegate_count
default_worker_pool_size
hipe_compile
sysmon_handler.
# clustering
cluster_name
cluster_formation.
cluster_keepalive_interval
cluster_partition_handling
cluster_partition_handling.
cluster_tags.*
node_tags.*
mnesia_table_loading_retry_limit
mnesia_table_loading_retry_timeout
metadata_store.
prevent_startup_if_node_was_reset
vhost_restart_strategy
# queues and messages
default_queue_type
queue_types.
classic_queue.default_version
queue_index_embed_msgs_below
queue_master_locator
queue_leader_locator
mirroring_sync_batch_size
mirroring_sync_max_throughput
message_store_shutdown_timeout
quorum_queue.
raft.
stream.
exchange_types.
message_interceptors.
channel_interceptor.priorities.
# product, motd
product.name
product.version
motd_file
# logging (hare acts on log.file, log.console and their level and formatter)
log.dir
log.file
log.file.level
log.file.formatter
log.file.formatter.
log.file.rotation.
log.console
log.console.level
log.console.formatter
log.console.formatter.
log.console.stdio
log.console.use_colors
log.console.color_esc_seqs.
log.exchange
log.exchange.
log.journald
log.journald.
log.syslog
log.syslog.
log.default.
log.channel.file
log.channel.level
log.channel.rotation.
log.connection.file
log.connection.level
log.connection.rotation.
log.federation.file
log.federation.level
log.federation.rotation.
log.mirroring.file
log.mirroring.level
log.mirroring.rotation.
log.queue.file
log.queue.level
log.queue.rotation.
log.ra.file
log.ra.level
log.ra.rotation.
log.upgrade.file
log.upgrade.level
log.upgrade.rotation.
log.user.file
log.user.level
log.user.rotation.
log.error_logger_format_depth
log.summarize_process_state
# plugins
management.
management_agent.
prometheus.
mqtt.
web_mqtt.
stomp.
web_stomp.
shovel.
federation.
auth_ldap.
auth_http.
auth_cache.
auth_oauth2.
trust_store.
event_exchange.
tracing.
aws.
http_dispatch.
"""


@cache
def _compiled() -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    prefixes: list[str] = []
    exact: list[tuple[str, ...]] = []
    for line in _PATTERNS.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("."):
            prefixes.append(line)
        else:
            exact.append(tuple(line.split(".")))
    return tuple(prefixes), tuple(exact)


def rabbitmq_knows(key: str) -> bool:
    """Whether ``key`` is a rabbitmq.conf key of RabbitMQ (or of one of its plugins)."""
    prefixes, exact = _compiled()
    if any(key.startswith(p) and len(key) > len(p) for p in prefixes):
        return True
    parts = key.split(".")
    return any(len(p) == len(parts) and all(a == "*" and b or a == b for a, b in zip(p, parts, strict=True))
               for p in exact)


def known_names() -> list[str]:
    """The patterns, for suggestions ("did you mean ...?")."""
    prefixes, exact = _compiled()
    return [".".join(p) for p in exact if "*" not in p] + [p.rstrip(".") for p in prefixes]
