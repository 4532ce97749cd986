"""A hare cluster on etcd (docs/clustering.md): ``membership`` is the sans-IO table of nodes kept
from etcd's keys; ``etcd_node`` is the asyncio shell that joins, keeps its lease and watches."""
