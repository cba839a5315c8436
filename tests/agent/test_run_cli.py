"""`amesh-agent run`'s flags: each one an environment variable, Istio's name where pilot-agent has one,
defaults derived from the injector's environment as pilot-agent derives them."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sidecar_agent import run_cli
from sidecar_agent.run_cli import istio_defaults, run

POD = {"POD_NAME": "reviews-v1-abc", "POD_NAMESPACE": "default", "INSTANCE_IP": "10.244.0.7"}


def params(monkeypatch, env: dict[str, str], args: tuple[str, ...] = ()) -> dict:
    """What click resolves from `args` and `env`, without running the agent."""
    for key in [k for k in __import__("os").environ if k.startswith(("AMESH_", "XDS_", "ISTIO", "ENVOY_",
                                                                      "PROXY_CONFIG", "JWT_POLICY",
                                                                      "PILOT_CERT_PROVIDER",
                                                                      "TERMINATION_DRAIN"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return run.make_context("run", list(args)).params


def test_root_cert_and_token_follow_pilot_agent():
    never = lambda path: False  # noqa: E731
    assert istio_defaults({}, never)["xds_root_cert"] == "/var/run/secrets/istio/root-cert.pem"
    assert istio_defaults({"PILOT_CERT_PROVIDER": "kubernetes"}, never)["xds_root_cert"] == \
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert istio_defaults({}, lambda p: p == "/etc/certs/root-cert.pem")["xds_root_cert"] == \
        "/etc/certs/root-cert.pem"
    assert istio_defaults({"XDS_ROOT_CA": "/x/ca.pem", "PILOT_CERT_PROVIDER": "kubernetes"}, never)[
        "xds_root_cert"] == "/x/ca.pem"
    assert istio_defaults({}, never)["xds_token"] == "/var/run/secrets/tokens/istio-token"
    assert istio_defaults({"JWT_POLICY": "first-party-jwt"}, never)["xds_token"] == \
        "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_proxy_config_supplies_address_auth_policy_and_ports():
    env = {"PROXY_CONFIG": '{"discoveryAddress": "istiod-canary.istio-system.svc:15010", '
                           '"controlPlaneAuthPolicy": "NONE", "statusPort": 15120, "proxyAdminPort": 15100}'}
    got = istio_defaults(env, lambda p: False)
    assert (got["discovery_address"], got["plaintext"], got["metrics_port"], got["admin_port"]) == \
        ("istiod-canary.istio-system.svc:15010", True, 15120, 15100)
    plain = istio_defaults({}, lambda p: False)
    assert (plain["discovery_address"], plain["plaintext"], plain["metrics_port"], plain["admin_port"]) == \
        ("istiod.istio-system.svc:15012", False, 15020, 15000)
    with pytest.raises(click.UsageError, match="PROXY_CONFIG is not valid JSON"):
        istio_defaults({"PROXY_CONFIG": "{discoveryAddress"})


def test_every_flag_reads_its_environment_variable(monkeypatch, tmp_path):
    env = {
        "AMESH_DISCOVERY_ADDRESS": "10.0.0.1:15010", "AMESH_PLAINTEXT": "true",
        "XDS_ROOT_CA": str(tmp_path / "ca.pem"), "AMESH_XDS_TOKEN": str(tmp_path / "token"),
        "ISTIOD_SAN": "istiod.istio-system.svc", "AMESH_APISIX_MODE": "file",
        "AMESH_APISIX_ADMIN_URL": "http://127.0.0.1:19180", "AMESH_APISIX_ADMIN_KEY": "k",
        "AMESH_APISIX_CONFIG_FILE": str(tmp_path / "apisix.yaml"), "AMESH_APISIX_PREFIX": str(tmp_path),
        "AMESH_APISIX_METRICS_URL": "http://127.0.0.1:15091/m", "AMESH_APISIX_SCHEMA_DIR": str(tmp_path),
        "AMESH_NO_APISIX": "1", "ENVOY_STATUS_PORT": "25021", "AMESH_METRICS_PORT": "25020",
        "AMESH_ADMIN_PORT": "25000", "AMESH_PARTIAL_TIMEOUT": "3", "TERMINATION_DRAIN_DURATION_SECONDS": "7",
        "AMESH_LOG_LEVEL": "debug", "AMESH_CONTROLLER_ADDRESS": "amesh-controller.istio-system.svc:15810",
        "AMESH_CONTROLLER_TOKEN": str(tmp_path / "sa-token"),
        "CA_ADDR": "istiod-ca.istio-system.svc:15012", "CA_ROOT_CA": str(tmp_path / "ca-root.pem"),
        "TRUST_DOMAIN": "example.org",
    }
    got = params(monkeypatch, env)
    assert got == {
        "discovery_address": "10.0.0.1:15010", "plaintext": True, "xds_root_cert": str(tmp_path / "ca.pem"),
        "xds_token": tmp_path / "token", "xds_server_name": "istiod.istio-system.svc", "apisix_mode": "file",
        "apisix_admin_url": "http://127.0.0.1:19180", "apisix_admin_key": "k",
        "apisix_config_file": tmp_path / "apisix.yaml", "apisix_prefix": tmp_path,
        "apisix_metrics_url": "http://127.0.0.1:15091/m", "apisix_schema_dir": tmp_path, "no_apisix": True,
        "status_port": 25021, "metrics_port": 25020, "admin_port": 25000, "partial_timeout": 3.0,
        "drain_seconds": 7.0, "log_level": "debug",
        "controller_address": "amesh-controller.istio-system.svc:15810", "controller_token": tmp_path / "sa-token",
        "ca_address": "istiod-ca.istio-system.svc:15012", "ca_root_cert": str(tmp_path / "ca-root.pem"),
        "trust_domain": "example.org",
    }
    # A flag on the command line wins over its variable.
    assert params(monkeypatch, env, ("--status-port", "15021", "--tls"))["status_port"] == 15021
    assert params(monkeypatch, env, ("--tls",))["plaintext"] is False
    # Every option has a variable: none is flag-only.
    assert all(p.envvar for p in run.params if isinstance(p, click.Option)), \
        [p.name for p in run.params if isinstance(p, click.Option) and not p.envvar]


def test_config_of_maps_system_roots_and_defaults(monkeypatch):
    got = params(monkeypatch, {"XDS_ROOT_CA": "SYSTEM"})
    config = run_cli.config_of(dict(got, log_level=None))
    assert config.root_cert is None and config.problems() == []  # the system's roots need no file
    assert config.discovery_address == "istiod.istio-system.svc:15012" and not config.plaintext
    assert (config.status_port, config.metrics_port, config.admin_port) == (15021, 15020, 15000)
    assert config.controller_address is None  # AMESH_CONTROLLER_ADDRESS unset or empty: no plugin client


def test_controller_token_is_what_the_controller_token_review_accepts():
    # The controller's TokenReview asks for the API server's audience and a pod-name claim: the bound
    # service-account token; the istio-ca istio-token only when that one is not mounted.
    sa = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert istio_defaults({}, lambda p: p == sa)["controller_token"] == sa
    assert istio_defaults({}, lambda p: False)["controller_token"] == "/var/run/secrets/tokens/istio-token"


def test_controller_address_is_checked_and_empty_means_none(monkeypatch):
    got = params(monkeypatch, {"XDS_ROOT_CA": "SYSTEM", "AMESH_CONTROLLER_ADDRESS": " "})
    assert run_cli.config_of(dict(got, log_level=None)).controller_address is None
    got = params(monkeypatch, {"XDS_ROOT_CA": "SYSTEM", "AMESH_CONTROLLER_ADDRESS": "amesh-controller"})
    config = run_cli.config_of(dict(got, log_level=None))
    assert config.problems() == ["--controller-address must be HOST:PORT, got 'amesh-controller'"]


def test_bad_input_is_named_before_anything_starts(monkeypatch, tmp_path):
    for key, value in POD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDS_ROOT_CA", str(tmp_path / "missing.pem"))
    result = CliRunner().invoke(run, ["--no-apisix", "--apisix-admin-key", "k"])
    assert result.exit_code == 2 and "missing.pem" in result.output and "XDS_ROOT_CA" in result.output
    result = CliRunner().invoke(run, ["--discovery-address", "istiod", "--plaintext", "--no-apisix",
                                      "--apisix-admin-key", "k"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = CliRunner().invoke(run, ["--status-port", "http"])
    assert result.exit_code == 2 and "status-port" in result.output
    assert not Path(tmp_path / "conf").exists()  # nothing was written


def test_apisix_missing_from_path_is_one_line(monkeypatch, tmp_path):
    """It used to end in a 59-line traceback from the supervisor's first start."""
    from sidecar_agent.apisix.supervisor import apisix_command

    assert run_cli.missing_programs(apisix_command(), which=lambda p: None) == ["`apisix`", "`openresty`"]
    assert run_cli.missing_programs(apisix_command(), which=lambda p: f"/usr/bin/{p}") == []
    for key, value in POD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    result = CliRunner().invoke(run, ["--plaintext", "--discovery-address", "127.0.0.1:15010",
                                      "--apisix-prefix", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: `apisix` and `openresty` not on PATH: run the agent in the amesh-sidecar image (APISIX installed), "
        "add APISIX's bin directories to PATH, or pass --no-apisix to use an APISIX you run")


def test_schema_dir_that_is_not_one_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "3.18" / "core").mkdir(parents=True)
    (tmp_path / "3.18" / "core" / "route.json").write_text("{}")
    for key, value in POD.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(run, ["--plaintext", "--discovery-address", "127.0.0.1:15010", "--no-apisix",
                                      "--apisix-admin-key", "k" * 16, "--apisix-schema-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {tmp_path}: not an APISIX schema directory (no core/route.json); give a version folder, "
        f"e.g. {tmp_path / '3.18'}")


def test_tproxy_interception_is_refused_at_start(tmp_path):
    """A pod injected for TPROXY (ISTIO_META_INTERCEPTION_MODE) gets one line saying why, before anything starts."""
    from click.testing import CliRunner

    from sidecar_agent.cli import main

    env = {"POD_NAME": "p", "POD_NAMESPACE": "default", "INSTANCE_IP": "10.0.0.5",
           "ISTIO_META_INTERCEPTION_MODE": "TPROXY", "PATH": "/usr/bin:/bin"}
    result = CliRunner().invoke(main, ["run", "--plaintext", "--apisix-prefix", str(tmp_path)], env=env)
    assert result.exit_code == 2 and "interception mode TPROXY" in result.output
    assert "Traceback" not in result.output
