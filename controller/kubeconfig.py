"""Where the API server is and how to authenticate: the order client-go controllers use.

1. `--kube-url` (with `--kube-token-file`, `--kube-ca-file`): exactly that server.
2. `--kubeconfig` / `KUBECONFIG` (a `:`-separated list, merged as kubectl does), context `--context` or the
   file's current context.
3. In a pod: the service account (KUBERNETES_SERVICE_HOST, token and CA under SA_DIR).
4. `~/.kube/config` when it exists.

Kubeconfig files are read by the official client's loader (`kubernetes.config`): clusters with
`certificate-authority(-data)` and `insecure-skip-tls-verify`, users with a token, a token file, client
certificates, or an `exec` credential plugin (its token is refreshed when it expires). Only the
host, CA and credentials are taken from it; requests still go through `controller.kube`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from controller.kube import KubeConfig, KubeConfigError


def resolve(kube_url: str | None = None, token_file: Path | None = None, ca_file: Path | None = None,
            kubeconfig: str | None = None, context: str | None = None,
            env: Mapping[str, str] = os.environ) -> KubeConfig:
    """The API server settings for these flags (kubeconfig defaults to $KUBECONFIG)."""
    if kube_url:
        return KubeConfig(kube_url, token_file=token_file, ca_file=ca_file)
    kubeconfig = kubeconfig or env.get("KUBECONFIG") or None
    if kubeconfig:
        return from_kubeconfig(kubeconfig, context)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return KubeConfig.in_cluster(env)
    default = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
    if default.is_file():
        return from_kubeconfig(str(default), context)
    raise KubeConfigError(
        "no Kubernetes API server to talk to: not running in a pod (KUBERNETES_SERVICE_HOST is unset) and no "
        f"kubeconfig ({default} does not exist); pass --kubeconfig FILE (or set KUBECONFIG) or --kube-url URL")


def from_kubeconfig(path: str, context: str | None = None) -> KubeConfig:
    """Host, CA and credentials of `context` (default: current-context) in the kubeconfig file(s) `path`."""
    try:
        from kubernetes.client import Configuration
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.config.kube_config import load_kube_config
    except ImportError:
        raise KubeConfigError("reading a kubeconfig needs the kubernetes package: pip install 'amesh[controller]'") from None
    if not any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p):
        raise KubeConfigError(f"kubeconfig {path}: no such file")
    loaded = Configuration()
    try:
        load_kube_config(config_file=path, context=context, client_configuration=loaded, persist_config=False)
    except (ConfigException, yaml.YAMLError, OSError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc}") from None

    def token() -> str | None:
        value = loaded.get_api_key_with_prefix("BearerToken")  # runs the loader's refresh (exec plugins)
        return value.removeprefix("Bearer ").strip() if value else None

    return KubeConfig(loaded.host,
                      ca_file=Path(loaded.ssl_ca_cert) if loaded.ssl_ca_cert else None,
                      cert_file=Path(loaded.cert_file) if loaded.cert_file else None,
                      key_file=Path(loaded.key_file) if loaded.key_file else None,
                      verify=bool(loaded.verify_ssl), token_source=token)
