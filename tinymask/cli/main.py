"""`tinymask COMMAND ...`: parse, set the threads and the backend, run the command, turn errors into one line.

Errors a user can fix (a missing file, a malformed annotation file, a config that does not fit) end the command
with a one-line message and exit status 1, not a traceback. `tinymask COMMAND --help` documents each command.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from tinymask.cli.parser import build_parser
from tinymask.ops.threads import limit_threads


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)  # --threads must act before anything imports NumPy
    pre.add_argument("--threads")
    threads = pre.parse_known_args(argv)[0].threads
    if threads is not None and threads.isdigit() and int(threads) >= 1:
        limit_threads(int(threads))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be >= 1")

    from tinymask.ops.backend import resolve_backend, use_backend
    from tinymask.training.recipe import TrainingDiverged

    backend = getattr(args, "backend", None) if args.command != "ablate" else None  # ablate passes it to its runs
    if backend is not None:
        try:
            resolve_backend(backend)
        except RuntimeError as e:  # not available here: the reason, e.g. "numba-cuda not installed"
            print(f"tinymask {args.command}: error: --backend {backend}: {e}", file=sys.stderr)
            return 1
    try:
        with use_backend(backend) if backend else contextlib.nullcontext():
            return args.func(args)
    except TrainingDiverged as e:
        print(f"tinymask {args.command}: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError) as e:
        # user errors: missing files, malformed data or config, weights that do not fit (ValueError subclasses)
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        print(f"tinymask {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tinymask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
