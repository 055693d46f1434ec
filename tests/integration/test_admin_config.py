"""Operator and client configuration mistakes are local errors, not outages (issue 11).

* a ``ca_cert`` that did not issue the file's own certificate (another cluster's CA):
  every node used to show "unreachable" (exit 3); now one line naming the file, exit 1;
* an ``admin.toml`` whose ``cluster_id`` is not the cluster's: refused, exit 1, and nothing
  is changed on the cluster it reaches.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raftsso.client import SSOClient
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError
from tests.harness import Cluster, cli

pytestmark = pytest.mark.integration


def _variant(cluster: Cluster, name: str, source: Path, **changes: str) -> Path:
    """A copy of ``source`` (admin.toml or client.toml) with top-level keys changed."""
    text = source.read_text()
    for key, value in changes.items():
        text, n = re.subn(rf'^{key} = .*$', f'{key} = "{value}"', text, count=1,
                          flags=re.MULTILINE)
        assert n == 1, key
    path = cluster.root / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_wrong_ca_cert_is_a_configuration_error_naming_the_file(
        cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_deployment(other, nodes=1, base_port=7100)  # never started: only its CA is used
    admin = _variant(cluster, "admin-wrong-ca.toml", cluster.admin_toml,
                     ca_cert=str(other / "ca.pem"))
    for args in (["status"], ["status", "--json"], ["rotate"], ["members"]):
        done = cli("-c", str(admin), *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and str(admin) in lines[0] and "ca_cert" in lines[0], lines
        assert b"Traceback" not in done.stderr
    client = _variant(cluster, "client-wrong-ca.toml", cluster.client_toml,
                      ca_cert=str(other / "ca.pem"))
    with pytest.raises(ConfigError) as info:
        SSOClient.from_config(client, background=False)
    assert str(client) in str(info.value)
    # The right file still works: the cluster was never the problem.
    assert cli("-c", str(cluster.admin_toml), "status").returncode == 0


def test_admin_commands_refuse_a_cluster_id_that_is_not_the_clusters(
        cluster: Cluster) -> None:
    admin = _variant(cluster, "admin-other-cluster.toml", cluster.admin_toml,
                     cluster_id="c-000000000000")
    before = [v["id"] for v in cluster.status()["versions"]]
    for args in (["rotate", "--now"], ["status"], ["keys"], ["members"],
                 ["retire", "1", "--force", "--yes"], ["transfer-leader", "node1"]):
        done = cli("-c", str(admin), *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "c-000000000000" in lines[0] and cluster.cluster_id in lines[0], lines
    assert [v["id"] for v in cluster.status()["versions"]] == before
    assert json.loads(cli("-c", str(cluster.admin_toml), "status", "--json").stdout)[
        "cluster_id"] == cluster.cluster_id
