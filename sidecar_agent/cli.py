"""`amesh-agent`: the sidecar agent's command line (a click group; `run` joins `translate` later).

Subcommands import what they need when they run, so `amesh-agent --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def main() -> None:
    """Amesh sidecar agent: Istio xDS -> Apache APISIX."""


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the document here (default: standard output; with --summary: not written).")
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]), default="json", show_default=True,
              help="json: body for PUT /apisix/admin/configs; yaml: conf/apisix.yaml (ends with #END).")
@click.option("--summary", is_flag=True,
              help="Print a short summary (per service and port: routes, upstreams, what each rule became) "
                   "to standard output instead of the document; -o still writes the document.")
@click.option("--report", is_flag=True, help="Print the unsupported-field report to standard error.")
@click.option("--schema-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Validate against APISIX's JSON Schemas in this directory before writing.")
@click.option("--pod-ip", "pod_ips", multiple=True, metavar="IP",
              help="The pod's address (repeatable) for the inbound side; default: INSTANCE_IPS of the "
                   "dump's bootstrap node metadata. Without any, inbound is reported, not translated.")
@click.option("--outbound-policy", type=click.Choice(["ALLOW_ANY", "REGISTRY_ONLY"]),
              help="The mesh's outboundTrafficPolicy.mode (default: what virtualOutbound encodes).")
def translate(input_path: Path, output: Path | None, fmt: str, summary: bool, report: bool,
              schema_dir: Path | None, pod_ips: tuple[str, ...], outbound_policy: str | None) -> None:
    """Translate an Envoy /config_dump (JSON/YAML) or a directory of xDS resources into an APISIX document
    (routes, upstreams, and the data path's stream_routes on 15001/15006)."""
    from sidecar_agent.configdump import ConfigDumpError, load_config_dump, read_file
    from sidecar_agent.translate import TranslationError
    from sidecar_agent.translate import translate as run_translation
    from sidecar_agent.translate.render import render
    from sidecar_agent.translate.stream import OutboundPolicy

    if schema_dir is not None:
        from sidecar_agent.schema import SchemaDirError, Schemas, validate_document

        try:
            Schemas(schema_dir)  # a wrong folder is named before any work
        except SchemaDirError as exc:
            raise click.BadParameter(str(exc), param_hint="--schema-dir") from None
    try:
        contents = read_file(input_path) if input_path.is_file() else None  # read once (JSON parse: ~10%)
        if not pod_ips and contents is not None:
            pod_ips = _dump_pod_ips(contents)
        resources = load_config_dump(input_path, contents=contents)
        if not (resources.listeners or resources.route_configs or resources.clusters or resources.endpoints):
            raise click.ClickException(
                f"{input_path} holds no xDS resources (listeners, routes, clusters, endpoints): give an Envoy "
                "/config_dump, a list of resources, or a directory of them")
        result = run_translation(resources, pod_ips=pod_ips,
                                 outbound_policy=OutboundPolicy(outbound_policy) if outbound_policy else None)
    except (ConfigDumpError, TranslationError, ValueError) as exc:
        # one line: YAML parser errors span several
        raise click.ClickException(f"invalid input: {' '.join(str(exc).split())}") from None
    if schema_dir is not None:
        problems = validate_document(result.document, schema_dir)
        if problems:
            raise click.ClickException("the document does not validate:\n  " + "\n  ".join(problems[:50]))
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        try:
            tmp.write_text(render(result.document, fmt), encoding="utf-8")
            tmp.replace(output)  # never leave a half-written file behind
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}; give -o a file in an existing, "
                                       "writable directory") from None
    if summary:
        from sidecar_agent.translate.summary import summarize

        sys.stdout.write(summarize(result.document, result.report, output))
    elif output is None:
        sys.stdout.write(render(result.document, fmt))
    if report:
        sys.stderr.write(result.report.to_text())


def _dump_pod_ips(contents) -> tuple[str, ...]:
    """INSTANCE_IPS from the bootstrap of a config dump's data; () when it has none or is not one."""
    from sidecar_agent.translate.bootstrap import instance_ips

    return instance_ips(contents)


main.add_command(__import__("sidecar_agent.run_cli", fromlist=["run"]).run)  # `run` (issue #4); click only


if __name__ == "__main__":
    main()
