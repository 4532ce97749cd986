"""Architecture: broker/commands.py is the only code that writes the definitions store.

Every change of the metadata goes through the command layer (validate, check permissions, apply,
persist, announce); no other module under src/hare may call the writers of ``Definitions``
(store/definitions.py) on a definitions object. Checked on the source, with ``ast``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hare
from hare.store.definitions import Definitions

SRC = Path(hare.__file__).parent
COMMANDS = SRC / "broker" / "commands.py"
STORE = SRC / "store" / "definitions.py"
# the writers: every public method of Definitions but the reads (and seeded, which marks the
# first start, not a change of the model, and retry, which writes changes the command layer made
# but a full disk refused)
READS = {"vhosts", "exchanges", "queues", "bindings", "policies", "users", "vhost_limits", "close",
         "seeded", "retry"}
WRITERS = {name for name in vars(Definitions) if not name.startswith("_") and name not in READS}
# what a definitions object is called: self.definitions, broker.definitions, self._defs, defs ...
DEFINITIONS_OBJECT = re.compile(r"defin|defs\b|_defs|\bdb\b", re.IGNORECASE)


def writer_calls(path: Path) -> list[str]:
    """``file:line receiver.writer(`` for each call of a Definitions writer in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITERS
                and DEFINITIONS_OBJECT.search(ast.unparse(node.func.value))):
            found.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node.func)}(")
    return found


def test_the_writers_are_known() -> None:
    assert {"add_vhost", "remove_vhost", "add_exchange", "remove_exchange", "add_queue", "remove_queue",
            "add_binding", "remove_binding", "add_policy", "remove_policy", "put_user", "remove_user",
            "set_vhost_limits"} <= WRITERS


def test_only_the_command_layer_writes_the_definitions() -> None:
    others = [call for path in sorted(SRC.rglob("*.py")) if path not in (COMMANDS, STORE)
              for call in writer_calls(path)]
    assert others == [], "\n".join(others)
    assert writer_calls(COMMANDS)  # the check sees the calls where they are


def test_the_model_does_not_hold_the_definitions_store() -> None:
    """VirtualHost keeps the in-memory model and routing: it has no way to the store."""
    for module in ("broker/vhost.py", "broker/queue.py", "broker/exchanges/base.py"):
        tree = ast.parse((SRC / module).read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert "definitions" not in names, module
