"""Where ``hare serve`` logs: the console (stderr) and/or a file, each with its own level and
format (plain text or JSON lines), as rabbitmq.conf's ``log.console.*`` and ``log.file.*`` say."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# RabbitMQ's levels; "notice" sits between info and warning, "none" turns an output off
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": 25, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL, "none": logging.CRITICAL + 10}
FORMATTERS = ("plaintext", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class LogSettings:
    """The outputs. A level left None is ServeOptions.log_level (``--log-level``)."""

    console: bool = True
    console_level: str | None = None
    console_formatter: str = "plaintext"
    file: str | None = None  # a path; None: no log file
    file_level: str | None = None
    file_formatter: str = "plaintext"


def level(value: str) -> str:
    """A level name as rabbitmq.conf writes it (``info``, ``warning``, ...)."""
    v = value.strip().lower()
    if v not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, got {value!r}")
    return v


def formatter(value: str) -> str:
    v = value.strip().lower()
    if v not in FORMATTERS:
        raise ValueError(f"expected plaintext or json, got {value!r}")
    return v


# the attributes every LogRecord has; the others came with ``extra=`` and become JSON fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, msg, logger, and the record's extra
    fields (``extra={"peer": ...}``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": logging.getLevelName(record.levelno).lower() if record.levelno != 25 else "notice",
            "msg": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _formatter(kind: str) -> logging.Formatter:
    return JSONFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: LogSettings, default_level: str) -> list[logging.Handler]:
    """Install the handlers on the root logger (replacing any) and return them. Raises OSError
    when the log file cannot be opened."""
    handlers: list[logging.Handler] = []
    if settings.console:
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setLevel(LEVELS[settings.console_level or default_level])
        h.setFormatter(_formatter(settings.console_formatter))
        handlers.append(h)
    if settings.file:
        h = logging.FileHandler(settings.file, encoding="utf-8")
        h.setLevel(LEVELS[settings.file_level or default_level])
        h.setFormatter(_formatter(settings.file_formatter))
        handlers.append(h)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(min((h.level for h in handlers), default=LEVELS["none"]))
    return handlers
