"""`tinymask COMMAND ...`: parse, set the threads and the backend, run the command, turn errors into one line.

Every error ends the command with a one-line message and exit status 1, not a traceback: those a user or the machine
can cause (a missing file, a malformed annotation file, a config that does not fit, a full or read-only disk, a
refused pickle, a diverged run) name the problem and the file; anything else is reported as a probable bug.
`--debug` (any command) prints the traceback too. `tinymask COMMAND --help` documents each command.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import traceback

from tinymask.cli.parser import build_parser
from tinymask.ops.threads import limit_threads


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)  # --threads must act before anything imports NumPy
    pre.add_argument("--threads")
    pre.add_argument("--debug", action="store_true")
    early = pre.parse_known_args(argv)[0]
    if early.threads is not None and early.threads.isdigit() and int(early.threads) >= 1:
        limit_threads(int(early.threads))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        return run_command(args)
    except KeyboardInterrupt:
        print(f"tinymask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error ends in one line; --debug shows where it happened
        if early.debug:
            traceback.print_exc()
        print(f"tinymask {args.command}: {error_line(e)}", file=sys.stderr)
        if not early.debug and not isinstance(e, EXPECTED):
            print(f"tinymask {args.command}: this looks like a bug in tinymask; run the command again with --debug "
                  f"for the traceback, and report it", file=sys.stderr)
        return 1


def run_command(args) -> int:
    """The chosen command, on the chosen backend (an unavailable backend is an error that says why)."""
    from tinymask.ops.backend import resolve_backend, use_backend

    backend = getattr(args, "backend", None) if args.command != "ablate" else None  # ablate passes it to its runs
    if backend is not None:
        try:
            resolve_backend(backend)
        except RuntimeError as e:  # not available here: the reason, e.g. "numba-cuda not installed"
            raise RuntimeError(f"--backend {backend}: {e}") from None
    with use_backend(backend) if backend else contextlib.nullcontext():
        return args.func(args)


#: What a user or the machine can cause: missing or unreadable files, a full or read-only disk, malformed data,
#: configs and weights that do not fit (ValueError and its subclasses), refused pickles, a diverged run, an
#: unavailable backend. Anything else is reported in one line too, as a probable bug.
EXPECTED = (OSError, ValueError, pickle.UnpicklingError, RuntimeError)


def error_line(e: BaseException) -> str:
    """One line for an error: its message, with the path and the system's reason for file errors."""
    from tinymask.training.divergence import TrainingDiverged

    if isinstance(e, TrainingDiverged):
        return str(e)
    if isinstance(e, OSError) and e.filename and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
        message = f"{e.strerror}: {where}"
    elif isinstance(e, OSError) and e.strerror:  # tinymask's own, e.g. "cannot write runs/x/last: No space left ..."
        message = e.strerror
    else:
        message = str(e) or type(e).__name__
    if not isinstance(e, EXPECTED):
        message = f"{type(e).__name__}: {message}"
    return "error: " + " | ".join(line.strip() for line in message.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
