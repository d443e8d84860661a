"""`qdebug doctor`: report what this machine has for qdebug, and set up the rknn-toolkit2 environment."""

from __future__ import annotations

import argparse
import shutil
import subprocess

from qdebug.cli.terminal import mk, out_console


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `doctor` subcommand."""
    d = sub.add_parser("doctor", help="check the environment; --setup-rknn DIR creates the rknn-toolkit2 env")
    d.add_argument("--setup-rknn", metavar="DIR", default=None,
                   help="create rknn-toolkit2's own virtual environment in DIR (about 1.5 GB)")
    d.add_argument("--rknn-python", default=None, metavar="PATH",
                   help="python of the rknn-toolkit2 environment to check (default: QDEBUG_RKNN_PYTHON, then "
                        "the one --setup-rknn made)")
    d.set_defaults(func=cmd_doctor)


def _optional_versions() -> dict[str, str | None]:
    """Version of each optional package (None when it does not import), by plain imports."""
    out: dict[str, str | None] = {}
    try:
        import matplotlib

        out["matplotlib"] = getattr(matplotlib, "__version__", "installed")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        out["matplotlib"] = None
    try:
        import pycocotools

        out["pycocotools"] = getattr(pycocotools, "__version__", "installed")
    except Exception:  # noqa: BLE001
        out["pycocotools"] = None
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run `qdebug doctor`: print what this machine has; exit 1 when the rknn environment is broken."""
    from qdebug.compare.stage import environment
    from qdebug.runners.rockchip import DEFAULT_ENV, find_rknn_python, setup_rknn_env

    console = out_console()
    if args.setup_rknn:
        py = setup_rknn_env(args.setup_rknn, log=lambda s: console.print(mk("[dim]· {}[/]", s)))
        console.print(mk("rknn-toolkit2 environment ready: {}\nuse it with --rknn-python {} or export "
                         "QDEBUG_RKNN_PYTHON={}", py, py, py))
    env = environment()
    for k, v in env.items():
        console.print(mk("{} {}", f"{k:12s}", v))
    versions = _optional_versions()
    for mod, what in (("matplotlib", "plots in reports (extra: plot)"), ("pycocotools", "true mAP (extra: coco)")):
        v = versions[mod]
        console.print(mk("{} ", f"{mod:12s}") + (mk("{}", v) if v else "[yellow]missing[/]") + mk("  ({})", what))
    chrome = shutil.which("chromium")
    console.print(mk("{} {}  (optional: report rendering test)", f"{'chromium':12s}", chrome or "missing"))
    py = find_rknn_python(args.rknn_python)
    if py is None:
        console.print(mk("{} [yellow]not found[/] (run `qdebug doctor --setup-rknn {}` or set QDEBUG_RKNN_PYTHON)",
                         f"{'rknn':12s}", DEFAULT_ENV))
        return 0
    r = subprocess.run([py, "-c", "from importlib.metadata import version; print(version('rknn-toolkit2'))"],
                       capture_output=True, text=True)
    ok = r.returncode == 0
    console.print(mk("{} {}: rknn-toolkit2 ", f"{'rknn':12s}", py) + (mk("{}", r.stdout.strip()) if ok
                                                                     else "[red]broken[/]"))
    return 0 if ok else 1
