"""amesh-iptables: istio-iptables' command line, flag for flag, with its environment variables.

    amesh-iptables [istio-iptables] FLAGS          program the capture rules (the injector's call)
    amesh-iptables clean|istio-clean-iptables FLAGS  remove them (istio-clean-iptables)

The injector's call is parsed by init/flags.py without importing click (its import costs more than the
rest of a pod's capture); `--help`, and anything that parser leaves undecided, goes to click
(init/click_cli.py). Flags and exit codes: `amesh-iptables --help`.
"""

from __future__ import annotations

import os
import sys

from init.flags import FlagError, fast_parse, normalize_argv  # noqa: F401 - normalize_argv is public here


def _split(args: list[str]) -> tuple[str, list[str]]:
    """(command, its flags): the optional `istio-iptables` word, then `clean` or `istio-clean-iptables`."""
    if args[:1] == ["istio-iptables"]:
        args = args[1:]
    if args[:1] in (["clean"], ["istio-clean-iptables"]):
        return "clean", args[1:]
    return "apply", args


def parse_flags(args: list[str]) -> dict:
    """The flag values the apply command would see for this argv (and the current environment)."""
    from init import click_cli

    return click_cli.parse(normalize_argv(_split(list(args))[1]))


def main(argv: list[str] | None = None) -> None:
    """The console script. Run as a program (no argv given), it ends with os._exit once its output is
    flushed: tearing the interpreter down costs milliseconds of every pod's start and frees nothing the
    kernel would not."""
    if argv is not None:
        return _main(list(argv))
    code: int = 0
    try:
        _main(sys.argv[1:])
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(args: list[str]) -> None:
    from init import commands

    command, args = _split(args)
    try:
        args = normalize_argv(args)
        flags = fast_parse(args)
        if flags is None:
            from init import click_cli

            return click_cli.run(command, args)
    except FlagError as error:
        commands.fail(str(error))
    (commands.clean if command == "clean" else commands.apply)(flags)


if __name__ == "__main__":
    main()
