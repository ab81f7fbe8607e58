"""The image the chart runs: the Dockerfile's hard requirements, read statically because no container engine runs
here (the image is not built by the tests)."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

from tests.helm.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "cmake", "clang", "git", "python3-dev", "libc6-dev",
               "pkg-config", "cargo", "rustc"}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> list[dict]:
    args = {}
    stages: list[dict] = []
    for instr, rest in _instructions(text):
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        if instr == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "steps": []})
        elif stages:
            stages[-1]["steps"].append((instr, rest))
    return stages


def _apt_packages(run: str) -> set[str]:
    packages = set()
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if "apt-get" in words and "install" in words:
            packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


@pytest.fixture(scope="module")
def stages():
    if not DOCKERFILE.exists():
        pytest.fail(f"{DOCKERFILE} is missing")
    return _stages(DOCKERFILE.read_text())


def test_image_is_multi_stage_on_a_cuda_base(stages):
    assert len(stages) >= 2, "build tools must stay in a separate build stage"
    assert all(s["image"].startswith("nvidia/cuda:") for s in stages), [s["image"] for s in stages]


def test_final_stage_runs_as_a_non_root_numeric_user(stages):
    users = [rest for instr, rest in stages[-1]["steps"] if instr == "USER"]
    assert users, "the final stage never switches away from root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: runAsNonRoot needs a numeric non-zero uid"
    values = (REPO / "helm" / "splice-monitor" / "values.yaml").read_text()
    assert f"runAsUser: {uid}" in values, "the chart's runAsUser must match the image's user"


def test_final_stage_installs_no_build_tools(stages):
    final = stages[-1]
    installed = set()
    for instr, rest in final["steps"]:
        if instr == "RUN":
            installed |= _apt_packages(rest)
            assert not re.search(r"\bpip3? install\b", rest), "packages are built in the build stage, not here"
    assert installed, "expected the runtime's apt packages to be listed"
    assert not installed & BUILD_TOOLS, f"build tools in the final stage: {sorted(installed & BUILD_TOOLS)}"
    assert any(instr == "COPY" and rest.startswith("--from=") for instr, rest in final["steps"])


def test_build_stage_installs_the_package_with_the_pinned_torch(stages):
    runs = " ".join(rest for s in stages[:-1] for instr, rest in s["steps"] if instr == "RUN")
    assert re.search(r"pip install (\S+ )*\.( |$)", runs), "the package itself (pip install .) is not installed"
    assert "-e ." not in runs and "--editable" not in runs, "an editable install points at /src, absent at runtime"
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if re.match(r"torch\s*[<>=!~]", d))
    assert torch_pin in SpecifierSet(torch_spec.removeprefix("torch").strip()), (torch_pin, torch_spec)


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)", DOCKERFILE.read_text(), re.M)
    assert match, f"the Dockerfile declares no ARG {name}"
    return match.group(1)


def test_cuda_base_matches_the_cuda_build_of_torch(stages):
    # a base older than the wheel's CUDA passes the image's driver check on nodes whose driver torch then rejects
    torch_cuda = _arg("TORCH_CUDA")
    base_tag = stages[0]["image"].split(":", 1)[1]
    assert base_tag.startswith(torch_cuda + "."), (base_tag, torch_cuda)
    assert all(s["image"] == stages[0]["image"] for s in stages)


def test_image_pins_the_ray_release_the_chart_names(stages):
    import yaml

    ray_version = _arg("RAY_VERSION")
    runs = " ".join(rest for s in stages[:-1] for instr, rest in s["steps"] if instr == "RUN")
    assert '"ray[default]==${RAY_VERSION}"' in runs, "the build installs an unpinned ray"
    values = yaml.safe_load((REPO / "helm" / "splice-monitor" / "values.yaml").read_text())
    assert values["ray"]["version"] == ray_version


def test_dockerignore_keeps_the_context_small(stages):
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", "tests"} <= ignored
    copied = {rest.split()[0] for s in stages for instr, rest in s["steps"]
              if instr == "COPY" and not rest.startswith("--from=")}
    assert not copied & ignored, f"COPY of ignored paths: {copied & ignored}"


def test_parser_sees_instructions_across_continuations():
    text = "FROM a AS b\nRUN apt-get install -y \\\n    # comment\n    gcc make\nFROM c\nUSER 0\n"
    parsed = _stages(text)
    assert [s["name"] for s in parsed] == ["b", None]
    assert _apt_packages(parsed[0]["steps"][0][1]) == {"gcc", "make"}
