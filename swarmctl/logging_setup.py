"""Process-wide logging: human lines, or one JSON object a line, optionally to a rotated file.

The CLI calls :func:`setup_logging` once per invocation. Environment variables
let a service unit ask for machine-readable logs without new flags:

    SWARM_LOG_JSON=1           one JSON object a line (for journald/Loki/ELK)
    SWARM_LOG_FILE=PATH        also write to PATH, rotated by size
    SWARM_LOG_MAX_BYTES=N      rotate at N bytes (default 10 MiB)
    SWARM_LOG_BACKUPS=N        rotated files kept (default 5)

Explicit arguments win over the environment. Calling it again replaces the
handlers it installed before (and only those).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_MARK = "_swarmctl_handler"
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, logger, msg, pid, then ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in data:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(verbosity: int = 0, json_lines: bool = False, log_file: str | os.PathLike[str] | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS,
                  stream: IO[str] | None = None) -> logging.Logger:
    """Configure the root logger; returns it. The CLI passes the ``log.*`` settings.

    Args:
        verbosity: 0 warnings, 1 info, 2+ debug (the CLI's ``-v`` count).
        json_lines: One JSON object a line.
        log_file: Also log to this file, rotated.
        max_bytes: Rotate the file at this size.
        backups: Rotated files kept.
        stream: Where console logs go (default: stderr).
    """
    formatter: logging.Formatter = JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT)

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream if stream is not None else sys.stderr)]
    if log_file:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=max(0, max_bytes),
                                                             backupCount=max(0, backups), encoding="utf-8"))
    for handler in handlers:
        setattr(handler, _MARK, True)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.WARNING - 10 * min(max(verbosity, 0), 2))
    return root
