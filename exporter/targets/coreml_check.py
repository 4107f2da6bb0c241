"""Check a saved Core ML artifact's spec against its manifest (runs anywhere: no Core ML runtime).

For every program of the manifest: the package exists, its specification
version is the one of the manifest's deployment target, a multifunction
package has exactly the manifest's functions (default ``decode``), and the
function's inputs, outputs and states are exactly the ones the IOSpec and the
feature map say, in order, with their Core ML dtypes and the concrete shapes
(batch 1, t = the program's seq_len). The ``rgmobile.*`` metadata must be there.

The spec protobuf is read directly from the package: ``coremltools.models.MLModel``
rewrites the package's Manifest.json on open, which must not touch a hashed artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.artifact.manifest import Manifest
from exporter.errors import RgMobileError
from exporter.targets.coreml_convert import SPEC_VERSION, read_package_spec

Feature = tuple[str, str, tuple[int, ...]]  # (name, dtype, shape)
MIL_OPSET = {17: "CoreML7", 18: "CoreML8"}  # ML Program opset written for each deployment target


@dataclass(frozen=True)
class SpecCheck:
    """What was checked: one line per program, for the validate report."""

    lines: tuple[str, ...]

    def summary(self) -> str:
        return "; ".join(self.lines)


def _dtype_name(array_type: Any) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return str(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array_type.dataType)).lower()


def actual_features(features: Any, kind: str) -> list[Feature]:
    out = []
    for f in features:
        which = f.type.WhichOneof("Type")
        if kind == "state":
            if which != "stateType":
                raise RgMobileError(f"coreml spec: state {f.name} is a {which}, not a state")
            arr = f.type.stateType.arrayType
        else:
            if which != "multiArrayType":
                raise RgMobileError(f"coreml spec: {kind} {f.name} is a {which}, not a multiarray")
            arr = f.type.multiArrayType
        out.append((f.name, _dtype_name(arr), tuple(int(d) for d in arr.shape)))
    return out


def expected_features(manifest: Manifest, seq: int) -> dict[str, list[Feature]]:
    """Inputs, outputs and states a program of ``seq`` tokens must have, from the manifest alone."""
    fmap = manifest.format_details.get("features")
    if not isinstance(fmap, dict):
        raise RgMobileError("manifest: a coreml artifact needs format_details.features (IOSpec -> Core ML names)")
    batch = int(manifest.format_details.get("batch", 1))
    out: dict[str, list[Feature]] = {"input": [], "output": [], "state": []}
    seen_states = set()
    for s in manifest.io.inputs + manifest.io.outputs:
        f = fmap.get(s.name)
        if not isinstance(f, dict) or {"name", "kind", "dtype"} - set(f):
            raise RgMobileError(f"manifest: format_details.features has no complete entry for {s.name}")
        shape = s.concrete_shape(batch=batch, seq=seq)
        if f["kind"] == "state":
            if f["name"] not in seen_states:
                seen_states.add(f["name"])
                out["state"].append((f["name"], f["dtype"], shape))
        elif (f["kind"] == "input") != (s in manifest.io.inputs):
            raise RgMobileError(f"manifest: {s.name} is mapped as a Core ML {f['kind']}")
        else:
            out[f["kind"]].append((f["name"], f["dtype"], shape))
    return out


def _compare(where: str, kind: str, want: list[Feature], have: list[Feature]) -> None:
    if want == have:
        return
    for i in range(max(len(want), len(have))):
        w = want[i] if i < len(want) else None
        h = have[i] if i < len(have) else None
        if w != h:
            raise RgMobileError(f"{where}: {kind} #{i} is {h}, the manifest says {w}; re-export the artifact")


def _check_program(where: str, function: Any, desc: Any, opset: str) -> None:
    """The ML Program function itself uses the described names (renames reached the program) and opset."""
    if function.opset != opset:
        raise RgMobileError(f"{where}: ML Program opset {function.opset}, expected {opset}")
    inputs = [i.name for i in function.inputs]
    described = [f.name for f in desc.input] + [f.name for f in desc.state]
    if sorted(inputs) != sorted(described):
        raise RgMobileError(f"{where}: program inputs {inputs} differ from the described {described}")
    outputs = list(function.block_specializations[opset].outputs)
    if outputs != [f.name for f in desc.output]:
        raise RgMobileError(f"{where}: program outputs {outputs} differ from the described outputs")


def check_spec(artifact_dir: Path, manifest: Manifest) -> SpecCheck:
    """Raise :class:`RgMobileError` on the first difference between the saved spec(s) and the manifest."""
    if manifest.format != "coreml":
        raise RgMobileError(f"{artifact_dir}: format {manifest.format!r} is not coreml")
    details = manifest.format_details
    target = str(details.get("deployment_target", ""))
    try:
        ios = int(target.removeprefix("iOS"))
        want_version = SPEC_VERSION[ios]
    except (ValueError, KeyError):
        raise RgMobileError(f"manifest: unknown Core ML deployment_target {target!r}") from None
    by_file: dict[str, dict[str, int]] = {}
    for prog in manifest.programs.values():
        by_file.setdefault(prog.file, {})[prog.entry or ""] = prog.seq_len
    lines = []
    for file, entries in by_file.items():
        package = Path(artifact_dir) / file
        if not (package / "Manifest.json").is_file():
            raise RgMobileError(f"{package}: missing or not an .mlpackage")
        spec = read_package_spec(package)
        where = f"{file}"
        if spec.specificationVersion != want_version:
            raise RgMobileError(
                f"{where}: specification version {spec.specificationVersion}, expected {want_version} ({target})"
            )
        if not spec.HasField("mlProgram"):
            raise RgMobileError(f"{where}: not an ML Program")
        functions = {f.name: f for f in spec.description.functions}
        if "" in entries:
            if functions:
                raise RgMobileError(f"{where}: a multifunction package, but the manifest names no function")
            descriptions = {"": spec.description}
        else:
            if set(functions) != set(entries):
                raise RgMobileError(f"{where}: functions {sorted(functions)}, the manifest says {sorted(entries)}")
            if set(spec.mlProgram.functions) != set(entries):
                raise RgMobileError(f"{where}: ML Program functions {sorted(spec.mlProgram.functions)}")
            if spec.description.defaultFunctionName not in entries:
                raise RgMobileError(f"{where}: default function {spec.description.defaultFunctionName!r} unknown")
            descriptions = {n: functions[n] for n in entries}
        for entry, desc in descriptions.items():
            _check_program(f"{where}:{entry}" if entry else where, spec.mlProgram.functions[entry or "main"],
                           desc, MIL_OPSET[ios])  # fmt: skip
            seq = entries[entry]
            want = expected_features(manifest, seq)
            at = f"{where}:{entry}" if entry else where
            _compare(at, "input", want["input"], actual_features(desc.input, "input"))
            _compare(at, "output", want["output"], actual_features(desc.output, "output"))
            _compare(at, "state", want["state"], actual_features(desc.state, "state"))
            n = len(want["input"]) + len(want["output"]) + len(want["state"])
            lines.append(f"{at}: t={seq}, {n} features match")
        meta = dict(spec.description.metadata.userDefined)
        missing = [k for k in ("rgmobile.version", "rgmobile.config", "rgmobile.features") if k not in meta]
        if missing:
            raise RgMobileError(f"{where}: user-defined metadata lacks {missing}")
    return SpecCheck((f"{target} (spec v{want_version})", *lines))
