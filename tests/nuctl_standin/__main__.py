"""A stand-in ``nuctl`` (also ``docker`` and ``kubectl``) for testing the deploy scripts.

Run through the wrappers :func:`tests.nuctl_standin.install` writes onto PATH.
Every call is appended as one JSON line to the file ``NUCTL_STANDIN_LOG``
names: ``{"tool", "argv", "ok", "error"}``. A call the real tool would refuse
fails here too, with exit status 2 and the reason on stderr:

* nuctl: the sub-commands and flags of shared/reference/nuclio.md §5 (and
  ``nuctl build``); an unknown flag, ``--volume`` without ``src:dest``,
  ``deploy`` without ``--project-name``, a ``--platform`` other than
  local/kube/auto, a function or project name that is not a lowercase DNS
  label, a ``--file`` that breaks Nuclio's configuration rules
  (:mod:`tests.nuctl_standin.rules`) or a ``--path`` without the handler module;
* docker and kubectl: only what the deploy scripts may call.

With ``NUCTL_STANDIN_DASHBOARD`` set (a dashboard stand-in's URL), nuctl's
project, function and invoke commands are carried out there, so a test reads
the outcome of a script from the dashboard's state.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rules import NAME_RE, config_problems  # noqa: E402  (loaded by path: no repo on sys.path)

PROJECT_LABEL = "nuclio.io/project-name"
GLOBAL_VALUE = {"--platform", "-n", "--namespace", "--kubeconfig", "--access-key", "--api-url"}
GLOBAL_BOOL = {"-v", "--verbose", "--no-color"}
BUILD_VALUE = {"-p", "--path", "-f", "--file", "-i", "--image", "-r", "--registry", "--runtime", "--handler",
               "--base-image", "--build-command", "--onbuild-image", "--output-image-file", "--code-entry-type",
               "--build-code-entry-attrs", "--build-runtime-attrs"}
BUILD_BOOL = {"--no-pull", "--offline", "--no-cleanup"}
DEPLOY_VALUE = BUILD_VALUE | {"--project-name", "-e", "--env", "--volume", "--resource-limit", "--resource-request",
                              "--triggers", "--desc", "--run-image", "--run-registry", "--readiness-timeout",
                              "--annotations", "-l", "--labels", "--min-replicas", "--max-replicas",
                              "--logger-level", "--platform-config", "--input-image-file", "--replicas"}
DEPLOY_BOOL = BUILD_BOOL | {"-d", "--disable"}
REPEATABLE = {"-e", "--env", "--volume", "--resource-limit", "--resource-request", "--build-command"}
ALIASES = {"-p": "--path", "-f": "--file", "-i": "--image", "-r": "--registry", "-e": "--env", "-n": "--namespace",
           "-l": "--labels", "-d": "--disable", "-o": "--output", "-m": "--method", "-c": "--content-type",
           "-b": "--body", "-t": "--timeout", "-v": "--verbose"}
COMMANDS: dict[tuple[str, ...], tuple[set[str], set[str], int]] = {
    # (words): (value flags, boolean flags, max positional names)
    ("version",): (set(), set(), 0),
    ("build",): (BUILD_VALUE, BUILD_BOOL, 1),
    ("deploy",): (DEPLOY_VALUE, DEPLOY_BOOL, 1),
    ("create", "project"): ({"--description", "--owner"}, set(), 1),
    ("get", "project"): ({"-o", "--output"}, set(), 1),
    ("get", "function"): ({"-o", "--output", "--project-name", "-l", "--labels"}, set(), 1),
    ("delete", "project"): ({"--strategy"}, {"--wait"}, 1),
    ("delete", "function"): (set(), set(), 1),
    ("invoke",): ({"-m", "--method", "-c", "--content-type", "-b", "--body", "-d", "--headers", "-p", "--path",
                   "-t", "--timeout", "-l", "--log-level"}, {"--raise-on-status", "--skip-tls-verify"}, 1),
}


class Refused(Exception):
    """The real tool would refuse this call."""


# ---- recording ------------------------------------------------------------------------------------------------

def _record(tool: str, argv: list[str], error: str | None) -> None:
    log = os.environ.get("NUCTL_STANDIN_LOG")
    if not log:
        return
    with open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps({"tool": tool, "argv": argv, "ok": error is None, "error": error}) + "\n")


# ---- argument parsing -----------------------------------------------------------------------------------------

def _parse(argv: list[str]) -> tuple[tuple[str, ...], list[str], dict[str, Any]]:
    """(command words, positional names, {canonical flag: value | [values] | True})."""
    words: list[str] = []
    rest = list(argv)
    while rest and not rest[0].startswith("-") and len(words) < 2:
        words.append(rest.pop(0))
    if words[:1] in (["get"], ["delete"]) and len(words) == 2:
        words[1] = words[1].rstrip("s")  # functions/function, projects/project
    key = tuple(words[:2]) if tuple(words[:2]) in COMMANDS else tuple(words[:1])
    if key not in COMMANDS:
        raise Refused(f"unknown command {' '.join(words) or '(none)'!r}")
    names = words[len(key):]
    value_flags, bool_flags, max_names = COMMANDS[key]
    value_flags, bool_flags = value_flags | GLOBAL_VALUE, bool_flags | GLOBAL_BOOL
    flags: dict[str, Any] = {}
    while rest:
        token = rest.pop(0)
        if not token.startswith("-"):
            names.append(token)
            continue
        flag, eq, inline = token.partition("=")
        if flag in bool_flags and not eq:
            flags[ALIASES.get(flag, flag)] = True
            continue
        if flag not in value_flags:
            raise Refused(f"unknown flag {flag!r} for {' '.join(key)}")
        if eq:
            value = inline
        elif rest:
            value = rest.pop(0)
        else:
            raise Refused(f"flag {flag} needs a value")
        canonical = ALIASES.get(flag, flag)
        if flag in REPEATABLE:
            flags.setdefault(canonical, []).append(value)
        elif canonical in flags:
            raise Refused(f"flag {flag} given twice")
        else:
            flags[canonical] = value
    if len(names) > max_names:
        raise Refused(f"{' '.join(key)} takes at most {max_names} name(s), got {names}")
    platform = flags.get("--platform", "auto")
    if platform not in ("local", "kube", "auto"):
        raise Refused(f"--platform must be local, kube or auto, got {platform!r}")
    for name in names:
        if key != ("invoke",) and (not NAME_RE.match(name) or len(name) > 63):
            raise Refused(f"name {name!r} is not a lowercase DNS label ([a-z0-9-], at most 63)")
    return key, names, flags


# ---- the dashboard, when there is one -------------------------------------------------------------------------

def _dashboard(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    url = os.environ.get("NUCTL_STANDIN_DASHBOARD")
    if not url:
        return 0, None
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _namespace(flags: dict[str, Any]) -> str:
    return flags.get("--namespace", "nuclio")


# ---- nuctl sub-commands ---------------------------------------------------------------------------------------

def _load_config(flags: dict[str, Any], platform: str) -> dict:
    path = flags.get("--path")
    file = flags.get("--file")
    if file is None and path is not None:
        file = str(Path(path) / "function.yaml")
    if file is None:
        raise Refused("needs --file or --path with a function.yaml")
    try:
        config = yaml.safe_load(Path(file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise Refused(f"cannot read --file {file}: {exc}") from None
    problems = config_problems(config, platform="kube" if platform == "kube" else "local")
    if problems:
        raise Refused(f"{file} breaks Nuclio's rules: " + "; ".join(problems))
    if path is not None:
        module = str(config["spec"]["handler"]).split(":")[0].replace(".", "/") + ".py"
        if not (Path(path) / module).is_file():
            raise Refused(f"--path {path} has no {module} (the handler's module): stage the function first")
    return config


def _build(names: list[str], flags: dict[str, Any]) -> None:
    config = _load_config(flags, flags.get("--platform", "auto"))
    if not (flags.get("--image") or config["spec"].get("build", {}).get("image")):
        raise Refused("build needs --image or build.image")
    if flags.get("--platform") == "kube" and not flags.get("--registry"):
        raise Refused("a kube build must push: --registry")


def _deploy(names: list[str], flags: dict[str, Any]) -> None:
    if not flags.get("--project-name"):
        raise Refused("deploy needs --project-name (CVAT lists project cvat only; the pack's own functions "
                      "go to their own project)")
    platform = flags.get("--platform", "auto")
    config = _load_config(flags, platform)
    meta, spec = config["metadata"], config["spec"]
    if names:
        meta["name"] = names[0]
    meta["namespace"] = _namespace(flags)
    meta.setdefault("labels", {})[PROJECT_LABEL] = flags["--project-name"]
    env = spec.setdefault("env", [])
    for item in flags.get("--env", []):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise Refused(f"--env needs name=value, got {item!r}")
        env.append({"name": key, "value": value})
    volumes = spec.setdefault("volumes", [])
    for i, item in enumerate(flags.get("--volume", [])):
        src, colon, dest = item.partition(":")
        if not colon or not src.startswith("/") or not dest.startswith("/"):
            raise Refused(f"--volume needs /host/path:/container/path, got {item!r}")
        name = f"volume-{i + 1}"
        volumes.append({"volume": {"name": name, "hostPath": {"path": src}},
                        "volumeMount": {"name": name, "mountPath": dest}})
    if "--run-image" in flags:
        spec["image"] = flags["--run-image"]
    if "--platform-config" in flags:
        try:
            extra = json.loads(flags["--platform-config"])
        except ValueError as exc:
            raise Refused(f"--platform-config is not JSON: {exc}") from None
        if not isinstance(extra, dict) or set(extra) - {"attributes"}:
            raise Refused("--platform-config must be {\"attributes\": {...}}")
        spec.setdefault("platform", {}).setdefault("attributes", {}).update(extra.get("attributes", {}))
    if platform == "kube" and ("--registry" not in flags or "--run-registry" not in flags) and "image" not in spec:
        raise Refused("a kube deploy that builds needs --registry (push) and --run-registry (pull)")
    problems = config_problems(config, platform="kube" if platform == "kube" else "local")
    if problems:
        raise Refused("the deployed config breaks Nuclio's rules: " + "; ".join(problems))
    headers = {"x-nuclio-project-name": flags["--project-name"], "x-nuclio-function-namespace": meta["namespace"],
               "x-nuclio-wait-function-action": "true"}
    status, _ = _dashboard("GET", f"/api/functions/{meta['name']}", headers=headers)
    if status == 0:
        return
    method, path = ("PUT", f"/api/functions/{meta['name']}") if status == 200 else ("POST", "/api/functions")
    status, answer = _dashboard(method, path, config, headers)
    if status >= 300:
        raise Refused(f"dashboard answered {status}: {answer}")


def _create_project(names: list[str], flags: dict[str, Any]) -> None:
    if not names:
        raise Refused("create project needs a name")
    body = {"metadata": {"name": names[0], "namespace": _namespace(flags)},
            "spec": {"description": flags.get("--description", "")}}
    status, answer = _dashboard("POST", "/api/projects", body)
    if status >= 300:
        raise Refused(f"project {names[0]} already exists" if status == 409 else f"dashboard answered {status}")


def _get_project(names: list[str], flags: dict[str, Any]) -> None:
    status, answer = _dashboard("GET", f"/api/projects/{names[0]}" if names else "/api/projects")
    if status == 404 or status == 0 and names:
        raise Refused(f"project {names[0]} not found")
    sys.stdout.write(json.dumps(answer) + "\n")


def _get_function(names: list[str], flags: dict[str, Any]) -> None:
    headers = {"x-nuclio-function-namespace": _namespace(flags)}
    if flags.get("--project-name"):
        headers["x-nuclio-project-name"] = flags["--project-name"]
    status, answer = _dashboard("GET", "/api/functions", headers=headers)
    found = [f for n, f in sorted((answer or {}).items()) if not names or n == names[0]]
    if names and not found:
        raise Refused(f"function {names[0]} not found")
    if flags.get("--output") == "json":
        sys.stdout.write(json.dumps(found[0] if len(found) == 1 else found) + "\n")  # nuctl's quirk (§5)
    else:
        for fn in found:
            sys.stdout.write(f"{fn['metadata']['name']}\t{fn.get('status', {}).get('state', '')}\n")


def _delete_function(names: list[str], flags: dict[str, Any]) -> None:
    body = {"metadata": {"name": names[0], "namespace": _namespace(flags)}}
    status, _ = _dashboard("DELETE", "/api/functions", body,
                           {"x-nuclio-function-namespace": _namespace(flags)})
    if status == 404:
        raise Refused(f"function {names[0]} not found")
    if status >= 300:
        raise Refused(f"dashboard answered {status}")


def _delete_project(names: list[str], flags: dict[str, Any]) -> None:
    strategy = flags.get("--strategy", "restricted")
    if strategy not in ("restricted", "cascading"):
        raise Refused("--strategy must be restricted or cascading")
    status, answer = _dashboard("DELETE", "/api/projects", {"metadata": {"name": names[0]}},
                                {"x-nuclio-delete-project-strategy": strategy})
    if status >= 300:
        raise Refused(f"dashboard answered {status}: {answer}")


def _invoke(names: list[str], flags: dict[str, Any]) -> None:
    if not names:
        raise Refused("invoke needs a function name")
    status, answer = _dashboard("POST", "/api/function_invocations", None,
                                {"x-nuclio-function-name": names[0],
                                 "x-nuclio-function-namespace": _namespace(flags)})
    sys.stdout.write(f"> status {status}\n")


NUCTL = {("version",): lambda n, f: sys.stdout.write("Client version: 1.16.3 (stand-in)\n"),
         ("build",): _build, ("deploy",): _deploy, ("create", "project"): _create_project,
         ("get", "project"): _get_project, ("get", "function"): _get_function,
         ("delete", "function"): _delete_function, ("delete", "project"): _delete_project, ("invoke",): _invoke}


def nuctl(argv: list[str]) -> None:
    key, names, flags = _parse(argv)
    NUCTL[key](names, flags)


# ---- docker and kubectl: only what the scripts may call ------------------------------------------------------

def docker(argv: list[str]) -> None:
    if argv[:1] == ["version"] or argv[:2] == ["network", "inspect"] or argv[:2] == ["image", "inspect"]:
        return
    raise Refused(f"the deploy scripts have no business running docker {' '.join(argv[:2])}")


KUBECTL = {("create", "secret"), ("delete", "secret"), ("apply", "-f"), ("delete", "-f"), ("rollout", "status"),
           ("get", "nodes"), ("get", "secret"), ("delete", "daemonset")}


def kubectl(argv: list[str]) -> None:
    words = [a for a in argv if a not in ("-n", "--namespace")]
    namespaced = "-n" in argv or "--namespace" in argv
    if namespaced:
        i = argv.index("-n") if "-n" in argv else argv.index("--namespace")
        words = argv[:i] + argv[i + 2:]
    if tuple(words[:2]) not in KUBECTL:
        raise Refused(f"unexpected kubectl call: {' '.join(words[:2])}")
    if words[:2] == ["create", "secret"]:
        if not any(w.startswith("--from-file=") for w in words):
            raise Refused("a secret comes from a file (--from-file=key=path), never from a literal")
        if any(w.startswith("--from-literal") for w in words):
            raise Refused("--from-literal puts the secret on the command line")
    if words[:2] == ["apply", "-f"] and not Path(words[2]).is_file():
        raise Refused(f"kubectl apply -f {words[2]}: no such file")
    if words[:2] == ["get", "secret"]:
        raise Refused("secret not found")  # the stand-in keeps no secrets


TOOLS = {"nuctl": nuctl, "docker": docker, "kubectl": kubectl}


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    try:
        TOOLS[tool](argv)
    except Refused as exc:
        _record(tool, argv, str(exc))
        sys.stderr.write(f"{tool} (stand-in): {exc}\n")
        return 2 if "not found" not in str(exc) else 1
    _record(tool, argv, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
