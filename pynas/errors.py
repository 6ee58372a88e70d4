"""Expected failures: bad input, I/O and interruption, as opposed to bugs.

:class:`InputError` is a ``ValueError`` whose message is a complete, one-line
explanation naming the file or option at fault; the CLI (``pynas.cli.main``)
prints any expected failure as one line and exits with code 2, and lets any
other exception show its traceback. :func:`quoted` shortens long inputs quoted
in messages.
"""


class InputError(ValueError):
    """Bad input (an option, a file's content, a checkpoint of the wrong kind)."""


def quoted(value, limit: int = 80) -> str:
    """``repr(value)`` (``value`` itself for strings: ``repr`` of it), shortened
    to about ``limit`` characters with its middle elided."""
    text = repr(value)
    if len(text) <= limit:
        return text
    keep = max(limit - 5, 10)
    return f"{text[: keep * 2 // 3]} ... {text[-(keep - keep * 2 // 3):]}"


class NonFiniteError(InputError):
    """A loss or α became NaN or infinite: the run stops before saving it."""


class DiskFullError(OSError):
    """The disk filled up while a checkpoint was written: the previous checkpoint is kept."""


def expected_errors() -> tuple:
    """The exceptions a command reports in one line: bad input (ValueError, which
    includes InputError, JSON and Unicode errors), I/O (OSError: missing, read-only
    or full), unreadable pickles and a missing optional dependency."""
    import pickle

    from ._optional import MissingDependency

    return (ValueError, OSError, EOFError, pickle.UnpicklingError, MissingDependency)


def one_line(error: BaseException, limit: int = 600) -> str:
    """``error``'s message on one line (naming the file of an OSError), shortened to ``limit``."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    filename = getattr(error, "filename", None)
    if isinstance(error, OSError) and filename is not None and str(filename) not in text:
        text = f"{text}: {filename}"
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def run_command(name: str, command, interrupted_hint: str = "") -> int:
    """Runs ``command()`` (returning an exit code) inside the CLI's error boundary:
    an expected failure prints ``name: message`` on one line of stderr and gives
    exit code 2; Ctrl-C gives 130 with ``interrupted_hint``; anything else (a bug)
    propagates with its traceback. SystemExit passes through."""
    import sys

    try:
        return command()
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted{interrupted_hint}", file=sys.stderr)
        return 130
    except expected_errors() as e:
        print(f"{name}: {one_line(e)}", file=sys.stderr)
        return 2
