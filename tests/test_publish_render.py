"""Rendering registry models as Nuclio function configs (common/publish/render.py)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from common import __version__
from common.errors import SettingsError
from common.manifest import RuntimeSpec
from common.publish import CONFIG_HASH_ANNOTATION
from common.publish.config import config_hash
from common.publish.kinds import NotPublishable
from common.publish.render import PublishSettings, render, runtime_family
from common.registry.local import LocalRegistry
from tests.conftest import model_json, registry_tree, write_model

ENV = {
    "MODEL_REGISTRY": "gdrive:CVAT_Models",
    "NUCLIO_NETWORK": "cvat_cvat",
    "MODEL_CACHE_DIR": "/cache",
    "MODEL_CACHE_HOST_DIR": "/srv/cvat-models",
    "MODEL_CACHE_SIZE": "8GiB",
    "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": "/run/secrets/drive-sa.json",
    "PUBLISH_CREDENTIALS_HOST_PATH": "/srv/secrets/drive-sa.json",
    "DRIVE_RETRIES": "4",
    "GOOGLE_DRIVE_API_KEY": "secret-never-copied",
    "HOME": "/root",
}

CDLA_LABELS = ["text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
               "reference", "equation"]


def test_a_demo_model_renders_to_the_exact_body(demo_registry):
    record = LocalRegistry(demo_registry).resolve("cdla-layout-detector")
    config = render(record, PublishSettings.from_env(ENV))
    spec_labels = [{"id": i, "name": n, "type": "rectangle", "attributes": []} for i, n in enumerate(CDLA_LABELS)]
    expected = {
        "metadata": {
            "name": "gdrive-cdla-layout-detector",
            "namespace": "nuclio",
            "labels": {"cvat-gdrive-pack/managed": "true", "cvat-gdrive-pack/model": "cdla-layout-detector",
                       "nuclio.io/project-name": "cvat"},
            "annotations": {
                "name": "PP-PicoDet document layout detector (CDLA, 10 classes)",
                "type": "detector",
                "spec": json.dumps(spec_labels, separators=(",", ":")),
                "version": "1",
                "framework": "onnx",
                "cvat-gdrive-pack/model-folder": "cdla-layout-detector",
                "cvat-gdrive-pack/model-version": "1.0.0",
                "cvat-gdrive-pack/pack-version": __version__,
            },
        },
        "spec": {
            "description": record.manifest.description,
            "runtime": "python:3.11",
            "handler": "main:handler",
            "image": f"cvat.gdrive-runner.onnx:{__version__}",
            "env": [
                {"name": "MODEL_REGISTRY", "value": "gdrive:CVAT_Models"},
                {"name": "MODEL_NAME", "value": "cdla-layout-detector"},
                {"name": "MODEL_VERSION", "value": "1.0.0"},
                {"name": "MODEL_CACHE_DIR", "value": "/cache"},
                {"name": "MODEL_CACHE_SIZE", "value": "8589934592"},
                {"name": "MODEL_REFRESH_SECONDS", "value": "300"},
                {"name": "RUNNER_WORKERS", "value": "2"},
                {"name": "DRIVE_RETRIES", "value": "4"},
                {"name": "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY", "value": "/run/secrets/drive-sa.json"},
            ],
            "volumes": [
                {"volume": {"name": "model-cache", "hostPath": {"path": "/srv/cvat-models"}},
                 "volumeMount": {"name": "model-cache", "mountPath": "/cache"}},
                {"volume": {"name": "drive-credentials", "hostPath": {"path": "/srv/secrets/drive-sa.json"}},
                 "volumeMount": {"name": "drive-credentials", "mountPath": "/run/secrets/drive-sa.json",
                                 "readOnly": True}},
            ],
            "triggers": {"http": {"kind": "http", "name": "http", "numWorkers": 2,
                                  "workerAvailabilityTimeoutMilliseconds": 10000,
                                  "attributes": {"maxRequestBodySize": 67108864}}},
            "eventTimeout": "30s",
            "readinessTimeoutSeconds": 121,  # 120 + 7423528 bytes at 10 MiB/s, rounded up
            "platform": {"attributes": {"restartPolicy": {"name": "always", "maximumRetryCount": 3},
                                        "network": "cvat_cvat"}},
        },
    }
    body = json.loads(json.dumps(config.body))
    digest = body["metadata"]["annotations"].pop(CONFIG_HASH_ANNOTATION)
    assert body == expected
    assert digest == config.hash == config_hash(config.body) and len(digest) == 32
    assert (config.name, config.folder, config.version) == ("gdrive-cdla-layout-detector",
                                                            "cdla-layout-detector", "1.0.0")
    assert "secret-never-copied" not in json.dumps(config.body)


def test_rendering_is_stable(demo_registry):
    record = LocalRegistry(demo_registry).resolve("ppocr-text-detector")
    first, second = render(record, PublishSettings.from_env(ENV)), render(record, PublishSettings.from_env(ENV))
    assert first.body == second.body and first.hash == second.hash
    shuffled = dict(reversed(list(ENV.items())))
    shuffled["PUBLISH_PASS_ENV"] = "DRIVE_RETRIES, GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY,DRIVE_RETRIES"
    shuffled["UNRELATED"] = "whatever"
    assert render(record, PublishSettings.from_env(shuffled)).hash == first.hash
    other = render(record, PublishSettings.from_env({**ENV, "RUNNER_WORKERS": "3"}))
    assert other.hash != first.hash
    spec = json.loads(first.body["metadata"]["annotations"]["spec"])
    assert spec == [{"id": 0, "name": "text", "type": "polygon", "attributes": []}]


def test_defaults(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "tiny", model_json("tiny", description="  "), {"model.onnx": b"w"})
    config = render(LocalRegistry(root).resolve("tiny"), PublishSettings.from_env({}), pin_version=False)
    spec = config.body["spec"]
    assert spec["description"] == "tiny: detector model (onnx), version 1.0.0, from the model registry"
    assert [e["name"] for e in spec["env"]] == ["MODEL_REGISTRY", "MODEL_NAME", "MODEL_CACHE_DIR",
                                                "MODEL_CACHE_SIZE", "MODEL_REFRESH_SECONDS", "RUNNER_WORKERS"]
    assert spec["env"][0] == {"name": "MODEL_REGISTRY", "value": "local:/opt/registry"}
    assert spec["volumes"] == [{"volume": {"name": "model-cache", "hostPath": {"path": "/var/cache/cvat-models"}},
                                "volumeMount": {"name": "model-cache", "mountPath": "/var/cache/cvat-models"}}]
    assert spec["platform"] == {"attributes": {"restartPolicy": {"name": "always", "maximumRetryCount": 3}}}
    assert spec["readinessTimeoutSeconds"] == 121 and "resources" not in spec
    assert config.body["metadata"]["annotations"]["name"] == "tiny"


def test_a_local_registry_folder_is_mounted_read_only(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "tiny", model_json("tiny"), {"model.onnx": b"w"})
    settings = PublishSettings.from_env({"MODEL_REGISTRY": "local:/opt/registry",
                                         "PUBLISH_REGISTRY_HOST_DIR": "/srv/registry"})
    volumes = render(LocalRegistry(root).resolve("tiny"), settings).body["spec"]["volumes"]
    assert volumes[1] == {"volume": {"name": "model-registry", "hostPath": {"path": "/srv/registry"}},
                          "volumeMount": {"name": "model-registry", "mountPath": "/opt/registry", "readOnly": True}}


def test_gpu_models_get_one_worker_and_the_gpu_image(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "big", model_json("big", requirements={"gpu_required": True}), {"model.onnx": b"w" * 100})
    write_model(root, "dev", model_json("dev", runtime={"device": "GPU"}), {"model.onnx": b"w"})
    settings = PublishSettings.from_env({"RUNNER_IMAGE_ONNX_GPU": "registry.local/runner:gpu"})
    for folder in ("big", "dev"):
        spec = render(LocalRegistry(root).resolve(folder), settings).body["spec"]
        assert spec["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
        assert spec["triggers"]["http"]["numWorkers"] == 1
        assert {"name": "RUNNER_WORKERS", "value": "1"} in spec["env"]
        assert spec["image"] == "registry.local/runner:gpu"


def test_runtime_families_pick_images(demo_registry):
    settings = PublishSettings.from_env({"RUNNER_IMAGE_TENSORFLOW": "registry.local/tf:2.21"})
    reg = LocalRegistry(demo_registry)
    images = {f: render(reg.resolve(f), settings).body["spec"]["image"]
              for f in ("blazeface-face-detector", "cdla-layout-detector", "cdla-layout-detector-openvino",
                        "blazeface-face-detector-tflite", "ssdlite-person-detector")}
    # ONNX Runtime and OpenVINO share the onnx image (common/runtimes/families.py).
    onnx = f"cvat.gdrive-runner.onnx:{__version__}"
    assert images == {"blazeface-face-detector": onnx, "cdla-layout-detector": onnx,
                      "cdla-layout-detector-openvino": onnx,
                      "blazeface-face-detector-tflite": "registry.local/tf:2.21",
                      "ssdlite-person-detector": "registry.local/tf:2.21"}
    manifest = reg.resolve("cdla-layout-detector").manifest
    for framework, family in (("pytorch", "pytorch"), ("keras", "tensorflow"), ("tensorflow", "tensorflow")):
        other = dataclasses.replace(manifest, framework=framework, runtime=RuntimeSpec(name="native"))
        assert runtime_family(other) == family
    with pytest.raises(NotPublishable, match="no runner image runs framework 'tensorrt'"):
        runtime_family(dataclasses.replace(manifest, framework="tensorrt", runtime=RuntimeSpec(name="trt")))


def test_a_previous_version_is_named_and_pinned(tmp_path):
    reg = LocalRegistry(registry_tree(tmp_path / "registry"))
    config = render(reg.resolve("alpha", "1.0.0"), PublishSettings.from_env({}))
    assert config.name == "gdrive-alpha-v1-0-0"
    assert config.body["metadata"]["annotations"]["name"] == "alpha (1.0.0)"
    assert {"name": "MODEL_VERSION", "value": "1.0.0"} in config.body["spec"]["env"]
    assert config.body["metadata"]["labels"]["cvat-gdrive-pack/model"] == "alpha"
    assert render(reg.resolve("alpha"), PublishSettings.from_env({}), name="custom-name").name == "custom-name"


def test_interactor_and_tracker_annotations(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "clicker", model_json("clicker", type="interactor", labels=[], version="1.4.0",
                                            interactor={"min_pos_points": 1, "min_neg_points": 0,
                                                        "startswith_box": True}), {"model.onnx": b"w"})
    write_model(root, "follow", model_json("follow", type="tracker", labels=[], version="3.0.1",
                                           tracker={"supported_shape_types": ["rectangle", "polygon"]}),
                {"model.onnx": b"w"})
    reg, settings = LocalRegistry(root), PublishSettings.from_env({})
    clicker = render(reg.resolve("clicker"), settings).body["metadata"]["annotations"]
    assert {k: clicker[k] for k in ("type", "spec", "version", "min_pos_points", "min_neg_points",
                                    "startswith_box")} == {
        "type": "interactor", "spec": "[]", "version": "2", "min_pos_points": "1", "min_neg_points": "0",
        "startswith_box": "true"}
    assert "startswith_box_optional" not in clicker
    follow = render(reg.resolve("follow"), settings).body["metadata"]["annotations"]
    assert (follow["type"], follow["version"], follow["supported_shape_types"]) == ("tracker", "3",
                                                                                    "rectangle,polygon")


@pytest.mark.parametrize("latency, env, expected", [
    (None, {}, "30s"),
    (4000, {}, "30s"),
    (12000, {}, "36s"),
    (50000, {}, "55s"),
    (50000, {"PUBLISH_MAX_EVENT_TIMEOUT": "300"}, "150s"),
])
def test_event_timeout_follows_the_expected_latency(tmp_path, caplog, latency, env, expected):
    root = tmp_path / "registry"
    extra = {} if latency is None else {"requirements": {"expected_latency_ms": latency}}
    write_model(root, "slow", model_json("slow", **extra), {"model.onnx": b"w"})
    with caplog.at_level(logging.WARNING, logger="common.publish.render"):
        config = render(LocalRegistry(root).resolve("slow"), PublishSettings.from_env(env))
    assert config.body["spec"]["eventTimeout"] == expected
    warned = [r.getMessage() for r in caplog.records]
    assert warned == (["slow: requirements.expected_latency_ms 'fast' is not a positive number; using 30 s"]
                      if latency == "fast" else [])


def test_readiness_grows_with_the_model(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "heavy", model_json("heavy", extra_files=["more.bin"]),
                {"model.onnx": b"w" * (25 << 20), "more.bin": b"x" * (5 << 20)})
    config = render(LocalRegistry(root).resolve("heavy"), PublishSettings.from_env({}))
    assert config.body["spec"]["readinessTimeoutSeconds"] == 123  # 120 + 30 MiB / 10 MiB/s


def test_other_types_are_not_rendered(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "misc", model_json("misc", type="other"), {"model.onnx": b"w"})
    with pytest.raises(NotPublishable, match="type 'other' has no CVAT function kind"):
        render(LocalRegistry(root).resolve("misc"), PublishSettings.from_env({}))


@pytest.mark.parametrize("env, message", [
    ({"PUBLISH_PASS_ENV": "GOOGLE_DRIVE_API_KEY"},
     "PUBLISH_PASS_ENV: GOOGLE_DRIVE_API_KEY holds a secret and would be readable in every function's config"),
    ({"PUBLISH_PASS_ENV": "MODEL_NAME"}, "PUBLISH_PASS_ENV: MODEL_NAME is set by registry-sync itself"),
    ({"MODEL_CACHE_SIZE": "lots"}, "MODEL_CACHE_SIZE: invalid size 'lots'"),
    ({"MODEL_CACHE_SIZE": "0"}, "MODEL_CACHE_SIZE: must be at least 1 byte"),
    ({"RUNNER_WORKERS": "0"}, "RUNNER_WORKERS must be a whole number from 1 to 100, got '0'"),
    ({"PUBLISH_MAX_EVENT_TIMEOUT": "1m"}, "PUBLISH_MAX_EVENT_TIMEOUT must be a whole number from 1 to 86400"),
    ({"MODEL_REFRESH_SECONDS": "-1"}, "MODEL_REFRESH_SECONDS must be a number of seconds, 0 or more, got '-1'"),
    ({"PUBLISH_NAME_PREFIX": "CVAT_"}, "PUBLISH_NAME_PREFIX: function name prefix 'CVAT_' must be"),
    ({"PUBLISH_CREDENTIALS_HOST_PATH": "/srv/sa.json"},
     "PUBLISH_CREDENTIALS_HOST_PATH is set, but GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY (the path it is mounted at) "
     "is not passed"),
])
def test_bad_settings_are_refused(env, message):
    with pytest.raises(SettingsError) as err:
        PublishSettings.from_env(env)
    assert message in str(err.value)


def test_settings_defaults():
    settings = PublishSettings.from_env({})
    assert (settings.registry, settings.namespace, settings.project, settings.prefix, settings.workers,
            settings.network, settings.cache_size, settings.pass_env, settings.max_event_timeout) == (
        "local:/opt/registry", "nuclio", "cvat", "gdrive-", 2, None, 20 << 30, (), 55)
    assert dict(settings.images) == {"onnx": f"cvat.gdrive-runner.onnx:{__version__}",
                                     "pytorch": f"cvat.gdrive-runner.pytorch:{__version__}",
                                     "tensorflow": f"cvat.gdrive-runner.tensorflow:{__version__}"}
    assert settings.gpu_images["onnx"] == f"cvat.gdrive-runner.onnx-gpu:{__version__}"


def test_a_latency_that_is_not_a_number_is_refused_at_the_edge(tmp_path):
    from common.errors import ModelConfigError

    write_model(tmp_path, "slow", model_json("slow", requirements={"expected_latency_ms": "fast"}), {"model.onnx": b"x"})
    with pytest.raises(ModelConfigError) as err:
        LocalRegistry(tmp_path).resolve("slow")
    assert err.value.problems == [("$.requirements.expected_latency_ms", '"fast" is not of type "number"')]


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"PUBLISH_MIN_REPLICAS": "0"}, (0, 1)),
    ({"PUBLISH_MIN_REPLICAS": "0", "PUBLISH_MAX_REPLICAS": "3"}, (0, 3)),
    ({"PUBLISH_MIN_REPLICAS": "2"}, (2, 2)),
])
def test_replicas_for_scale_to_zero(demo_registry, env, expected):
    settings = PublishSettings.from_env(env)
    spec = render(LocalRegistry(demo_registry).resolve("cdla-layout-detector"), settings).body["spec"]
    got = (spec["minReplicas"], spec["maxReplicas"]) if "minReplicas" in spec else None
    assert got == expected
    if expected is None:
        assert "maxReplicas" not in spec


@pytest.mark.parametrize("env, message", [
    ({"PUBLISH_MAX_REPLICAS": "3"}, "PUBLISH_MAX_REPLICAS needs PUBLISH_MIN_REPLICAS"),
    ({"PUBLISH_MIN_REPLICAS": "-1"}, "PUBLISH_MIN_REPLICAS must be a whole number from 0 to 1000"),
    ({"PUBLISH_MIN_REPLICAS": "2", "PUBLISH_MAX_REPLICAS": "1"}, "PUBLISH_MAX_REPLICAS must be a whole number from 2"),
    ({"PUBLISH_MIN_REPLICAS": "0", "PUBLISH_MAX_REPLICAS": "0"}, "PUBLISH_MAX_REPLICAS must be a whole number from 1"),
])
def test_bad_replicas_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        PublishSettings.from_env(env)
