"""The click commands: `--help`, and every invocation the fast parser (init/flags.py) leaves to click.

Every long flag can also be set by its environment variable (upper-cased, '-' → '_'); an explicit flag,
even "", wins over the environment, which wins over the default — Istio's viper binding.
"""

from __future__ import annotations

import click

from init import commands
from init.flags import BOOL_FLAGS, STRING_FLAGS, bool_default, env_name

FORMS = (
    "\b\nForms:\n"
    "  amesh-iptables [OPTIONS]                      program the capture rules\n"
    "  amesh-iptables istio-iptables [OPTIONS]       the same, as Istio's injector calls it\n"
    "  amesh-iptables clean [OPTIONS]                remove them (istio-clean-iptables; same flags)\n"
    "  amesh-iptables istio-clean-iptables [OPTIONS] the same\n"
    "Every long flag can also be set by its environment variable (--envoy-port: ENVOY_PORT); an explicit\n"
    "flag, even \"\", wins. Exit codes: 0 ok, 1 bad input or apply failure (nothing left applied),\n"
    "126 validation failure."
)


def _options(command):
    for short, long, knob, help_text in reversed(BOOL_FLAGS):
        names = [f"{long}/--no-{long[2:]}"] + ([short] if short else [])
        command = click.option(*names, envvar=env_name(long), default=lambda long=long, knob=knob:
                               bool_default(long, knob), show_default=False, help=help_text)(command)
    for short, long, help_text in reversed(STRING_FLAGS):
        names = [long] + ([short] if short else [])
        command = click.option(*names, envvar=env_name(long), default="", help=help_text)(command)
    return command


_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.command(name="istio-iptables", context_settings=_SETTINGS, epilog=FORMS)
@_options
def apply_command(**flags) -> None:
    """Program a pod's network namespace so its TCP traffic goes through the sidecar (istio-iptables)."""
    commands.apply(flags)


@click.command(name="clean", context_settings=_SETTINGS, epilog=FORMS)
@_options
def clean_command(**flags) -> None:
    """Remove the capture rules amesh-iptables added (istio-clean-iptables); other rules stay."""
    commands.clean(flags)


def parse(args: list[str]) -> dict:
    """The flag values click gives the apply command for a normalized argv (and the current environment)."""
    with apply_command.make_context(commands.PROG, list(args)) as ctx:
        return dict(ctx.params)


def run(command_name: str, args: list[str]) -> None:
    command = clean_command if command_name == "clean" else apply_command
    try:
        command.main(args=args, prog_name=f"{commands.PROG} clean" if command is clean_command else commands.PROG,
                     standalone_mode=False)
    except click.exceptions.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.ClickException as error:
        # Istio (cobra) exits 1 on a bad flag; click's default would be 2.
        commands.fail(error.format_message())
    except click.exceptions.Abort:
        raise SystemExit(1) from None
