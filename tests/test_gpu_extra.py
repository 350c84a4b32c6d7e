"""The `gpu` extra (vLLM, DeepSpeed) of pyproject.toml, checked offline against what the installed TRL accepts.

The CPU environment never installs vLLM or DeepSpeed, so nothing else in the suite would notice a vLLM pin that
TRL 1.16 warns about (its `is_vllm_available` accepts a fixed range and only warns outside it), a pin that is not
exact (a cluster install would then float to whatever is newest), or a base dependency that starts pulling vLLM
onto CPU machines. The accepted range is read at test time from TRL's own source and metadata, so a TRL upgrade
moves the check with it instead of leaving a second copy of the range here. docs/gpu-install.md records the dry
runs behind the pins; its versions must match the extra's.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
GPU_ONLY = {"vllm", "deepspeed"}


@pytest.fixture(scope="module")
def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


@pytest.fixture(scope="module")
def gpu_pins(project) -> dict[str, Version]:
    """name -> pinned version of the gpu extra; fails unless each requirement is one exact `==` pin."""
    extras = project.get("optional-dependencies", {})
    assert "gpu" in extras, "pyproject.toml: [project.optional-dependencies] has no `gpu` extra"
    pins = {}
    for line in extras["gpu"]:
        req = Requirement(line)
        specs = list(req.specifier)
        assert req.marker is None and not req.extras and len(specs) == 1, f"gpu extra: {line!r} is not a bare pin"
        (spec,) = specs
        assert spec.operator == "==" and "*" not in spec.version, f"gpu extra: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    assert GPU_ONLY <= pins.keys(), f"gpu extra: pins {sorted(pins)}, expected at least {sorted(GPU_ONLY)}"
    return pins


def trl_vllm_range_from_source() -> tuple[Version, Version]:
    """(low, high) of the `Version(low) <= v <= Version(high)` test inside trl.import_utils.is_vllm_available.

    Read from the file with ast (TRL itself is not imported: it is slow and the test needs only this constant)."""
    spec = importlib.util.find_spec("trl.import_utils")
    assert spec is not None and spec.origin, "trl.import_utils not found: is TRL installed?"
    tree = ast.parse(Path(spec.origin).read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "is_vllm_available"]
    assert funcs, f"{spec.origin}: no is_vllm_available()"

    def version_literal(node: ast.AST) -> Version | None:
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Version" and len(node.args) == 1
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            return Version(node.args[0].value)
        return None

    for node in ast.walk(funcs[0]):
        if (isinstance(node, ast.Compare) and len(node.ops) == 2
                and all(isinstance(op, ast.LtE) for op in node.ops)):
            low, high = version_literal(node.left), version_literal(node.comparators[1])
            if low is not None and high is not None:
                return low, high
    raise AssertionError(f"{spec.origin}: is_vllm_available() has no `Version(a) <= v <= Version(b)` range; "
                         "TRL changed how it checks vLLM: read the new check and update this test")


def trl_extra_specifier(extra: str, name: str) -> SpecifierSet:
    """The specifier TRL's own `extra` puts on `name`, from the installed trl's metadata."""
    found = []
    for line in md.requires("trl") or []:
        req = Requirement(line)
        in_extra = req.marker is not None and req.marker.evaluate({"extra": extra})
        if canonicalize_name(req.name) == name and in_extra:
            found.append(req.specifier)
    assert found, f"trl {md.version('trl')} metadata: no {name} requirement in its `{extra}` extra"
    return SpecifierSet(",".join(str(s) for s in found))


def vllm_pin_supported(pin: Version, low: Version, high: Version, extra: SpecifierSet) -> bool:
    """TRL's two views of a supported vLLM: its runtime check (on the base version, as TRL compares) and the
    `vllm` extra of its metadata."""
    return low <= Version(pin.base_version) <= high and extra.contains(pin, prereleases=True)


def test_vllm_pin_is_in_the_range_trl_accepts(gpu_pins):
    low, high = trl_vllm_range_from_source()
    extra = trl_extra_specifier("vllm", "vllm")
    # The check itself can fail: versions either side of TRL's range are refused.
    assert not vllm_pin_supported(Version(f"{high.major}.{high.minor + 1}.0"), low, high, extra)
    assert not vllm_pin_supported(Version(f"{low.major}.{low.minor - 1}.0"), low, high, extra)
    pin = gpu_pins["vllm"]
    assert vllm_pin_supported(pin, low, high, extra), (
        f"pyproject.toml gpu extra: vllm=={pin} lies outside what trl {md.version('trl')} accepts: "
        f"is_vllm_available() {low}..{high}, trl[vllm] {extra}")


def test_deepspeed_and_transformers_pins_satisfy_trl_deepspeed_extra(project, gpu_pins):
    ds = trl_extra_specifier("deepspeed", "deepspeed")
    assert ds.contains(gpu_pins["deepspeed"]), f"gpu extra: deepspeed=={gpu_pins['deepspeed']} outside trl's {ds}"
    base = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    (pin,) = list(base["transformers"].specifier)
    tf = trl_extra_specifier("deepspeed", "transformers")
    assert tf.contains(pin.version), f"base transformers=={pin.version} outside trl[deepspeed]'s {tf}"


def test_no_non_gpu_requirement_pulls_vllm_or_deepspeed(project):
    """Neither the base dependencies nor any other extra name vLLM/DeepSpeed, directly or through the installed
    packages they pull (with the extras they ask for: `lm-eval[vllm]` or `trl[vllm]` would be caught)."""
    extras = project.get("optional-dependencies", {})
    roots = list(project["dependencies"]) + [r for name, reqs in extras.items() if name != "gpu" for r in reqs]
    seen: set[tuple[str, frozenset]] = set()
    stack = [(Requirement(r), "pyproject.toml") for r in roots]
    while stack:
        req, parent = stack.pop()
        name = canonicalize_name(req.name)
        assert name not in GPU_ONLY, f"{parent} requires {req}: a GPU-only package outside the gpu extra"
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue  # not installed here (e.g. a marker excludes it): nothing more to walk
        for line in requires:
            child = Requirement(line)
            env = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(e) for e in env):
                stack.append((child, f"{req.name} {md.version(req.name)}"))
    assert ("trl", frozenset()) in seen and len(seen) > 50, f"walked only {len(seen)} requirements"


def test_install_doc_records_the_pins(project, gpu_pins):
    """docs/gpu-install.md states the versions the dry runs resolved; they must be the ones pinned."""
    doc = (ROOT / "docs" / "gpu-install.md").read_text()
    for name, pin in gpu_pins.items():
        assert f"{name}=={pin}" in doc, f"docs/gpu-install.md does not record {name}=={pin}"
    assert 'pip install -e ".[gpu]"' in doc, "docs/gpu-install.md: the install command is missing"
    torch = re.search(r"torch==(\d+\.\d+\.\d+)", doc)
    assert torch, "docs/gpu-install.md records no torch==X.Y.Z"
    base = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    assert base["torch"].specifier.contains(torch.group(1)), (
        f"base {base['torch']} does not admit the torch=={torch.group(1)} that vLLM pins")
