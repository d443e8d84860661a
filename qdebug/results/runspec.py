"""`RunSpec`: the resolved inputs of a compare or bisect run, and the command line that repeats it.

Results carry their RunSpec so a report can print "reproduce" and "next step" commands built from
data, never by rewriting a saved command string: `to_argv("bisect")` keeps only the options bisect
accepts (a `compare --draw DIR` run does not suggest `bisect --draw DIR`).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import field
from typing import Any

from qdebug.results.record import Record, record

BOTH = ("compare", "bisect")


def opt(flag: str, commands: tuple[str, ...] = BOTH, kind: str = "value") -> dict:
    """Field metadata: the CLI flag, the commands that accept it, and how it is written (value|flag|list)."""
    return {"flag": flag, "commands": commands, "kind": kind}


def _csv(v: Any) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)


@record
class RunSpec(Record):
    """Every option that shaped a run, after defaults and the profile were resolved.

    Field names are the CLI's option names (argparse `dest`), so the CLI fills it with `from_options`.
    """

    command: str = "compare"
    model: str = ""
    data: str = field(default="", metadata=opt("--data"))
    samples: int | None = field(default=None, metadata=opt("--samples"))
    calib_data: str | None = field(default=None, metadata=opt("--calib-data"))
    size: list[int] | None = field(default=None, metadata=opt("--size"))
    resize: str = field(default="letterbox", metadata=opt("--resize"))
    color: str = field(default="rgb", metadata=opt("--color"))
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], metadata=opt("--mean"))
    std: list[float] = field(default_factory=lambda: [255.0, 255.0, 255.0], metadata=opt("--std"))
    layout: str | None = field(default=None, metadata=opt("--layout"))
    input_dtype: str | None = field(default=None, metadata=opt("--input-dtype"))
    backend: str = field(default="sim", metadata=opt("--backend"))
    platform: str = field(default="rk3588", metadata=opt("--platform"))
    profile: str = field(default="generic", metadata=opt("--profile"))
    dtype: str = field(default="int8", metadata=opt("--dtype"))
    calibrator: str = field(default="minmax", metadata=opt("--calibrator"))
    percentile: float = field(default=99.99, metadata=opt("--percentile"))
    per_tensor_weights: bool = field(default=False, metadata=opt("--per-tensor-weights", kind="flag"))
    asymmetric_weights: bool = field(default=False, metadata=opt("--asymmetric-weights", kind="flag"))
    symmetric_activations: bool = field(default=False, metadata=opt("--symmetric-activations", kind="flag"))
    override: list[str] = field(default_factory=list, metadata=opt("--override", kind="list"))
    overrides: str | None = field(default=None, metadata=opt("--overrides"))
    calib: str | None = field(default=None, metadata=opt("--calib"))
    quantized: str | None = field(default=None, metadata=opt("--quantized"))
    quantized_dumps: str | None = field(default=None, metadata=opt("--quantized-dumps", ("compare",)))
    dump_map: str | None = field(default=None, metadata=opt("--dump-map", ("compare",)))
    dump_layout: str | None = field(default=None, metadata=opt("--dump-layout", ("compare",)))
    task: str | None = field(default=None, metadata=opt("--task"))
    anchors: str | None = field(default=None, metadata=opt("--anchors"))
    labels: str | None = field(default=None, metadata=opt("--labels"))
    conf: float = field(default=0.25, metadata=opt("--conf"))
    iou: float | None = field(default=None, metadata=opt("--iou"))
    max_det: int = field(default=300, metadata=opt("--max-det"))
    nc: int | None = field(default=None, metadata=opt("--nc"))
    kpt_shape: str | None = field(default=None, metadata=opt("--kpt-shape"))
    task_output: str | None = field(default=None, metadata=opt("--task-output"))
    blank: int | None = field(default=None, metadata=opt("--blank"))
    ctc_layout: str | None = field(default=None, metadata=opt("--ctc-layout"))
    draw: str | None = field(default=None, metadata=opt("--draw", ("compare",)))
    target: str | None = field(default=None, metadata=opt("--target", ("bisect",)))
    promote_dtype: str = field(default="int16", metadata=opt("--promote-dtype", ("bisect",)))
    cut_search: str = field(default="auto", metadata=opt("--cut-search", ("bisect",)))
    cut_threshold: str | None = field(default=None, metadata=opt("--cut-threshold", ("bisect",)))
    format: str | None = field(default=None, metadata=opt("--format", ("bisect",)))

    @classmethod
    def from_options(cls, command: str, options: Any, **resolved: Any) -> RunSpec:
        """Read the fields from an options object (e.g. argparse's namespace); `resolved` wins."""
        kw: dict[str, Any] = {"command": command}
        for f in dataclasses.fields(cls):
            if f.name in ("command", "extra"):
                continue
            if f.name in resolved:
                kw[f.name] = resolved[f.name]
            elif hasattr(options, f.name) and (f.metadata.get("commands") is None or
                                               command in f.metadata.get("commands", BOTH)):
                v = getattr(options, f.name)
                kw[f.name] = list(v) if isinstance(v, tuple) else v
        return cls(**kw)

    def to_argv(self, command: str | None = None, **changes: Any) -> list[str]:
        """`qdebug COMMAND model --opt value ...` for this run, keeping only options `command` accepts and
        differing from their defaults; `changes` replaces field values (e.g. target=...)."""
        spec = dataclasses.replace(self, **changes) if changes else self
        cmd = command or spec.command
        argv = ["qdebug", cmd, spec.model]
        for f in dataclasses.fields(spec):
            meta = f.metadata
            if "flag" not in meta or cmd not in meta["commands"]:
                continue
            v = getattr(spec, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if v is None or v == default or v == [] or v is False:
                continue
            if meta["kind"] == "flag":
                argv.append(meta["flag"])
            elif meta["kind"] == "list":
                for x in v:
                    argv += [meta["flag"], str(x)]
            elif isinstance(v, (list, tuple)):
                argv += [meta["flag"], _csv(v)]
            else:
                argv += [meta["flag"], f"{v:g}" if isinstance(v, float) else str(v)]
        return argv

    def command_line(self, command: str | None = None, **changes: Any) -> str:
        """`to_argv` quoted for a POSIX shell."""
        return " ".join(shlex.quote(a) for a in self.to_argv(command, **changes))
