"""The README's embedding snippets run as written (imports included), and hare.testing exports
what they use."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pika

import hare.broker.broker
import hare.testing

README = Path(__file__).parent.parent / "README.md"


def _embedding_snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Embedding hare"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_hare_testing_exports_broker_config() -> None:
    assert hare.testing.BrokerConfig is hare.broker.broker.BrokerConfig
    assert "BrokerConfig" in hare.testing.__all__


def test_the_readme_embedding_snippets_run(tmp_path: Path) -> None:
    first, second = _embedding_snippets()
    assert "import pika" in first and "import aio_pika" in first
    scope: dict[str, Any] = {}
    exec(compile(first, "README.md", "exec"), scope)  # the sync broker runs at once
    asyncio.run(scope["main"]())
    assert "/tmp/hare-app" in second
    exec(compile(second.replace("/tmp/hare-app", str(tmp_path / "data")), "README.md", "exec"), scope)
    assert isinstance(scope["conn"], pika.BlockingConnection)  # app/s3cret logged in
    assert scope["broker"].url.startswith("amqp://app:s3cret@127.0.0.1:")
    assert (tmp_path / "data" / "definitions.sqlite3").is_file()  # data_dir is used
