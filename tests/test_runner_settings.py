"""Runner settings from the environment: bad values stop the start with a clear error."""

import pytest

from common.errors import ModelConfigError
from common.registry.opening import open_registry
from common.runner import RunnerSettings
from common.registry.local import LocalRegistry


def test_defaults_and_parsing():
    settings = RunnerSettings.from_env({"MODEL_NAME": "faces", "MODEL_VERSION": " 1.2.0 ", "MODEL_CACHE_SIZE": "2GiB"})
    assert (settings.model, settings.version, settings.cache_size) == ("faces", "1.2.0", 2 * 1024 ** 3)
    assert settings.registry == "local:/opt/registry" and str(settings.cache_dir) == "/var/cache/cvat-models"
    assert RunnerSettings.from_env({"MODEL_NAME": "faces", "MODEL_VERSION": ""}).version is None


@pytest.mark.parametrize("env, message", [
    ({}, "MODEL_NAME is not set"),
    ({"MODEL_NAME": "  "}, "MODEL_NAME is not set"),
    ({"MODEL_NAME": "m", "MODEL_CACHE_SIZE": "abc"}, "MODEL_CACHE_SIZE: "),
    ({"MODEL_NAME": "m", "MODEL_CACHE_SIZE": "0"}, "MODEL_CACHE_SIZE must be at least 1 byte, got '0'"),
    ({"MODEL_NAME": "m", "MODEL_CACHE_SIZE": "0.5"}, "MODEL_CACHE_SIZE must be at least 1 byte"),
    ({"MODEL_NAME": "m", "RUNNER_MAX_IMAGE_PIXELS": "0"}, "RUNNER_MAX_IMAGE_PIXELS"),
    ({"MODEL_NAME": "m", "RUNNER_MAX_IMAGE_PIXELS": "lots"}, "RUNNER_MAX_IMAGE_PIXELS"),
])
def test_bad_settings_stop_the_start(monkeypatch, env, message):
    monkeypatch.delenv("RUNNER_MAX_IMAGE_PIXELS", raising=False)
    if "RUNNER_MAX_IMAGE_PIXELS" in env:
        monkeypatch.setenv("RUNNER_MAX_IMAGE_PIXELS", env["RUNNER_MAX_IMAGE_PIXELS"])
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(")):
        RunnerSettings.from_env(env)


def test_registry_spec(tmp_path):
    assert isinstance(open_registry(f"local:{tmp_path}"), LocalRegistry)
    assert open_registry(str(tmp_path)).root == tmp_path


@pytest.mark.parametrize("spec, message", [("local:", "needs the registry folder's path"),
                                           ("gdriv:CVAT_Models", "unknown registry kind 'gdriv'"),
                                           ("GDRIVE:x", "unknown registry kind 'GDRIVE'")])
def test_bad_registry_specs_are_named(spec, message):
    with pytest.raises(ModelConfigError, match=message):
        open_registry(spec)
