"""`qdebug report`: turn a compare/bisect JSON result into report.md, report.html and plots."""

from __future__ import annotations

import argparse

from qdebug.cli.terminal import mk, out_console
from qdebug.errors import QDebugError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    r = sub.add_parser("report", help="Markdown/HTML report with plots from a compare or bisect JSON result",
                       description="Write DIR/report.md (paste into an issue, images next to it), "
                                   "DIR/report.html (one self-contained file) and DIR/*.png.")
    r.add_argument("result", metavar="RESULT.json", help="file written by `qdebug compare/bisect --json`")
    r.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the report (created)")
    r.add_argument("--model", default=None, help="the float ONNX model, when not at the path in the result "
                   "(used to re-run two inputs for the why-plots)")
    r.add_argument("--data", default=None, help="the input set, when not at the path in the result")
    r.add_argument("--top", type=int, default=15, help="rows of the worst-ops tables in the body (default 15)")
    r.add_argument("--no-why", action="store_true", help="skip the why-plots (no model re-run)")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Run `qdebug report`: write report.md, report.html and the plots from a result JSON."""
    from pathlib import Path

    from qdebug.compare.explain import explain
    from qdebug.report.build import check_output, why_ops, write_report
    from qdebug.results.schema import load_result

    doc = load_result(args.result)
    check_output(args.output, args.top)
    for opt, path in (("--model", args.model), ("--data", args.data)):
        if path and not Path(path).exists():  # asked for the why-plots' re-run: a typo must not pass silently
            raise QDebugError("not found", file=path, where=opt, fix=f"check the path, or drop {opt}")
    explained = explain(doc, why_ops(doc, wanted=not args.no_why), model=args.model, data=args.data,
                        base_dir=Path(args.result).parent)
    paths = write_report(doc, args.output, explained, top=args.top, protect=args.run_inputs)
    pngs = [k for k in paths if k.endswith(".png")]
    out_console().print(mk("wrote {} and {}", paths["md"], paths["html"])
                                   + (f" ({len(pngs)} plot{'s' * (len(pngs) != 1)})" if pngs else ""))
    return 0
