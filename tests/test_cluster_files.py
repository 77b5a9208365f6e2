"""The Ray cluster launcher files (cluster.yaml for AWS, cluster.local.yaml on-premises).

Checked offline with Ray's own config preparation and schema validation, the first two steps of
`ray up`. They read only Ray's bundled defaults.yaml and ray-schema.json: neither imports boto3
(not installed here) nor touches the network; AWS is reached only in the next steps of `ray up`
(node resource auto-detection and the provider's bootstrap_config), which these tests leave out.
The `no_network` fixture makes any connection attempt fail the tests.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS_FILE = ROOT / "cluster.yaml"
LOCAL_FILE = ROOT / "cluster.local.yaml"
TORCH_PIN = re.compile(r"pip install torch==2\.13\.0\b")  # the tested torch, before the project
RAY_PORTS = (8265, 6379, 10001)  # dashboard / job API, GCS, Ray Client: never opened to the world


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """Prepare and validate a cluster config as `ray up` does; return the prepared config.

    Private API, pinned to ray 2.60.0 (ray.autoscaler._private.util): prepare_config merges
    the provider's defaults.yaml (a shallow, top-level merge) and fills node-type worker counts;
    validate_config checks ray-schema.json and the node-type rules. Raises
    jsonschema.ValidationError, ValueError or click.ClickException (local provider) when the
    config is wrong. Re-check these names when upgrading Ray.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster file validation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return load(AWS_FILE)


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    return load(LOCAL_FILE)


def gpu_worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if node.get("resources", {}).get("GPU", 0) > 0
    }


def opened_ports(config: dict[str, Any]) -> set[int]:
    """TCP ports the AWS file adds to Ray's security group (Ray adds 22 and intra-cluster)."""
    ports: set[int] = set()
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        low, high = int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535))
        if rule.get("IpProtocol") in ("-1", -1):  # all protocols: every port
            low, high = 0, 65535
        ports.update(range(low, high + 1))
    return ports


# ---------------------------------------------------------------- both files validate


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=["aws", "local"])
def test_file_validates(path):
    prepared = ray_validate(load(path))
    assert prepared["cluster_name"].startswith("grok_tune")
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=["aws", "local"])
def test_misspelt_top_level_key_fails(path):
    import jsonschema

    config = load(path)
    config["setup_comands"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        ray_validate(config)


def test_misspelt_node_type_key_fails(aws):
    config = copy.deepcopy(aws)
    config["available_node_types"]["gpu_ondemand"]["min_worker"] = 1
    with pytest.raises(Exception, match="Additional properties"):
        ray_validate(config)


def test_misspelt_provider_key_is_not_caught(aws):
    # Known gap: provider (and node_config, passed as is to EC2) allow any key in Ray's schema.
    config = copy.deepcopy(aws)
    config["provider"]["regoin"] = config["provider"]["region"]
    ray_validate(config)


def test_fractional_gpu_on_a_node_type_fails(aws):
    # Node types advertise whole GPUs; trials share one with --gpus-per-trial 0.25.
    import jsonschema

    config = copy.deepcopy(aws)
    config["available_node_types"]["gpu_ondemand"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="not of type 'integer'"):
        ray_validate(config)


def test_local_provider_rejects_node_types(local):
    import click

    config = copy.deepcopy(local)
    config["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    with pytest.raises(click.ClickException, match="not supported for on-premise"):
        ray_validate(config)


# ---------------------------------------------------------------- the AWS cluster


def test_head_runs_no_trials_aws(aws):
    prepared = ray_validate(aws)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0


def test_gpu_workers_autoscale_from_zero(aws):
    prepared = ray_validate(aws)
    workers = gpu_worker_types(prepared)
    assert workers, "no GPU worker node type"
    for node in workers.values():
        assert node["min_workers"] == 0
        assert node["node_config"]["InstanceType"] == "g5.xlarge"
        assert node["resources"] == {"CPU": 4, "GPU": 1}  # g5.xlarge: 4 vCPU, 1 A10G
    assert max(node["max_workers"] for node in workers.values()) > 0


def test_spot_is_an_option(aws):
    spot = [
        node
        for node in gpu_worker_types(aws).values()
        if node["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    assert len(spot) == 1 and spot[0]["min_workers"] == 0
    head = aws["available_node_types"][aws["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # losing the head ends the study


def test_every_node_type_sets_its_ami(aws):
    # Ray's default AMI (Ubuntu 18.04, CUDA 11.2) cannot run torch 2.13.0.
    images = {node["node_config"].get("ImageId") for node in aws["available_node_types"].values()}
    assert len(images) == 1 and None not in images


def test_only_ssh_is_opened_aws(aws):
    assert opened_ports(aws) <= {22}
    for node in aws["available_node_types"].values():
        # Ray's own group (intra-cluster + SSH) is used, not an unchecked one.
        assert "SecurityGroupIds" not in node["node_config"]
        assert "NetworkInterfaces" not in node["node_config"]


def test_opened_ports_sees_a_dashboard_rule(aws):
    config = copy.deepcopy(aws)
    config["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0/0"}]}
    ]
    assert 8265 in opened_ports(config)


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=["aws", "local"])
def test_dashboard_listens_on_localhost_only(path):
    # Keys a file leaves out come from Ray's defaults.yaml; AWS's binds the dashboard to 0.0.0.0.
    prepared = ray_validate(load(path))
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start
    for port in RAY_PORTS:
        assert f"{port}:{port}" not in start


def test_local_head_runs_no_trials(local):
    prepared = ray_validate(local)
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--num-cpus=0" in start


def test_local_uses_documentation_addresses(local):
    ips = [local["provider"]["head_ip"], *local["provider"]["worker_ips"]]
    assert all(ip.startswith("192.0.2.") for ip in ips)  # RFC 5737 TEST-NET-1


# ---------------------------------------------------------------- install


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=["aws", "local"])
def test_setup_installs_tested_versions(path):
    import ray

    config = load(path)
    assert config["file_mounts"] == {"~/grok_tune": "."}
    prepared = ray_validate(config)
    for role in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[role]  # setup_commands merged in front by prepare_config
        torch_at = [i for i, c in enumerate(commands) if TORCH_PIN.search(c)]
        project_at = [i for i, c in enumerate(commands) if "pip install -e ~/grok_tune" in c]
        assert torch_at and project_at, role
        assert torch_at[0] < project_at[0], "torch must be installed before the project"
        pins = re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", " ".join(commands))
        assert pins == [ray.__version__], "the cluster must run the Ray that runs `ray up`"
