"""One way for every command line to fail: a single `error: ...` line, exit status 2.

    def main(argv=None) -> int:
        return run_cli(build_parser(), run, argv)   # run(args) -> exit status

`run_cli` parses the arguments and runs the command. A user error (a wrong argument,
file or folder) prints one line naming it and the fix and exits 2; anything unexpected
prints one line saying so and exits 1. The traceback is shown only with `--debug`
(`add_debug_flag`). No TensorFlow here: `--help` must answer without loading it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130

# Error classes of care_tf whose message is written for the user (looked up in
# sys.modules: a class can only have been raised if its module was imported).
_USER_ERRORS = (
    ("care_tf.cli_errors", "UsageError"),
    ("care_tf.train.config", "ConfigError"),
    ("care_tf.train.strategy", "StrategyError"),
    ("care_tf.export.source", "ExportError"),
    ("care_tf.locking", "LockError"),
    ("care_tf.transfer.keras_hub_bridge", "TransferError"),
)


class UsageError(Exception):
    """A user error: the message names the argument, file or folder and the fix."""


def prog_name(module: str) -> str:
    """`care-train` etc. when run as a console script, else `python -m MODULE`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name and not name.endswith(".py") and name not in ("-m", "-c", "__main__.py"):
        return name
    return f"python -m {module}"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _is_user_error(err: BaseException) -> bool:
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def _tf_error(err: BaseException):
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    op_error = getattr(errors, "OpError", None)
    return isinstance(op_error, type) and isinstance(err, op_error)


def _first_line(text: str, limit: int = 600) -> str:
    """The line that says what went wrong (the last one after a heading such as
    TensorFlow's "in user code:")."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:
        line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(err: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception reaching a command line."""
    if _is_user_error(err):
        return " ".join(str(err).split()), EXIT_USAGE
    if isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or type(err).__name__
        return f"{err.filename}: {reason}. Check the path and its permissions.", EXIT_USAGE
    if isinstance(err, OSError) and err.errno is not None:
        return f"{err.strerror or err} (an OS error; check free disk space).", EXIT_USAGE
    if _tf_error(err):
        text = getattr(err, "message", str(err))
        # Assertion messages of our input pipelines come after the op's own words.
        for marker in ("care_tf", "images must", "image is", "image_bytes"):
            at = text.find(marker)
            if at >= 0:
                text = text[at:]
                break
        return _first_line(text), EXIT_USAGE
    if type(err) is ValueError:  # subclasses (UnicodeDecodeError...) are not our messages
        return _first_line(str(err)) or type(err).__name__, EXIT_USAGE
    if isinstance(err, MemoryError):
        return "out of memory: use a smaller batch size or image size.", EXIT_BUG
    message = _first_line(str(err))
    return (
        f"unexpected {type(err).__name__}{': ' + message if message else ''} "
        "(rerun with --debug for the traceback, and please report it)",
        EXIT_BUG,
    )


def run_cli(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """Parses `argv`, runs `command(args)` and turns any error into one `error:` line.

    Returns:
        The command's exit status (None counts as 0), 2 for a user error, 1 for an
        unexpected one, 130 when interrupted. With `--debug` errors propagate.
    """
    args = parser.parse_args(argv)
    try:
        return int(command(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        message, status = describe(err)
        print(f"error: {message}", file=sys.stderr)
        return status
