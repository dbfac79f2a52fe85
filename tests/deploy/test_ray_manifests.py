"""deploy/ray: the KubeRay manifest and the `ray up` cluster are valid YAML whose settings
dropbatch accepts, and whose sharding fits the GPUs they ask for."""

from __future__ import annotations

import yaml
from deploy_helpers import REPO

from dropbatch.settings import ENV_VARS, Settings

RAY = REPO / "deploy" / "ray"
# Not dropbatch settings but read by the image (entrypoint.sh, Hugging Face).
IMAGE_VARS = {"HF_HOME", "DROPBATCH_MODEL_DOWNLOAD"}


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def assert_known_settings(env: dict[str, str]) -> Settings:
    unknown = set(env) - set(ENV_VARS) - IMAGE_VARS
    assert not unknown, f"not dropbatch settings (typos?): {sorted(unknown)}"
    return Settings.from_env(env)


def test_kuberay_cluster_runs_the_runner_on_the_head_and_engines_on_gpu_workers():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((RAY / "raycluster.yaml").read_text())}
    assert set(docs) == {"ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "RayCluster"}
    settings = assert_known_settings(docs["ConfigMap"]["data"])
    engine = settings.engine
    assert engine.ray_address == "auto" and engine.device == "gpu"

    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "ray start --head" in head["args"][0]
    assert head["args"][0].rstrip().endswith("exec /opt/dropbatch/entrypoint.sh runner")
    [group] = cluster["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    gpus_per_worker = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    for container in (head, worker):
        assert {"configMapRef": {"name": "dropbatch-env"}} in container["envFrom"]

    # Tensor parallel stays inside one node; all replicas fit the GPUs of the workers.
    assert engine.tensor_parallel_size <= gpus_per_worker
    shards = engine.tensor_parallel_size * engine.pipeline_parallel_size
    assert shards * engine.most_replicas <= gpus_per_worker * group["replicas"]


def test_ray_up_cluster_has_a_gpu_free_head_and_the_runner_profile():
    config = yaml.safe_load((RAY / "cluster.yaml").read_text())
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"GPU": 0}
    assert {n["node_config"]["IamInstanceProfile"]["Name"] for n in nodes.values()} == {"dropbatch-runner"}
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    assert "./deploy/ray/engine.env" in config["file_mounts"].values()

    settings = assert_known_settings(parse_env_file((RAY / "engine.env").read_text()))
    assert settings.engine.ray_address == "auto"
    # g5.12xlarge has 4 GPUs: tensor parallel must fit one worker node.
    assert nodes["gpu_worker"]["node_config"]["InstanceType"] == "g5.12xlarge"
    assert settings.engine.tensor_parallel_size <= 4
