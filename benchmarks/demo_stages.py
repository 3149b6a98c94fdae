"""Wall time of the README's main command, stage by stage, and the share spent installing versus working.

Clones this repository's HEAD into a fresh folder (or uses --workdir as it is when it already holds a
checkout), runs the command there (default `make demo`), stamps each line of its output with the time
it arrived, and splits the run at DVC's "Running stage 'NAME'" lines: everything before the first stage
is installing (venv, pip), each stage runs until the next one starts, and what follows the last stage is
the results table being printed.

    python benchmarks/demo_stages.py                              # fresh clone, make demo (about 15 minutes)
    python benchmarks/demo_stages.py --workdir /tmp/demo --log /tmp/demo.log --json /tmp/stages.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^Running stage '([\w-]+)'")
INSTALL = "install"


@dataclass
class Phase:
    name: str
    seconds: float


def run_timed(command: str, cwd: Path, log) -> tuple[int, list[tuple[float, str]]]:
    """The command's exit code and its output lines (stdout and stderr merged), each with seconds since start."""
    start = time.monotonic()
    lines = []
    with subprocess.Popen(command, shell=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            stamp = time.monotonic() - start
            lines.append((stamp, line.rstrip("\n")))
            log.write(f"[{stamp:8.1f}s] {line}")
            log.flush()
    lines.append((time.monotonic() - start, ""))  # the end
    return process.returncode, lines


def phases(lines: list[tuple[float, str]]) -> list[Phase]:
    """Install, then one phase per DVC stage that ran, then `results` (the table printed)."""
    marks = [(0.0, INSTALL)] + [(t, m.group(1)) for t, text in lines if (m := STAGE_LINE.match(text))]
    if len(marks) > 1:  # the results table follows the last stage
        marks.append((_table_start(lines, marks[-1][0]), "results"))
    bounds = [t for t, _ in marks[1:]] + [lines[-1][0]]
    return [Phase(name, round(stop - begin, 1)) for (begin, name), stop in zip(marks, bounds)]


def _table_start(lines: list[tuple[float, str]], after: float) -> float:
    """When the results table began to print (the last stage's end), or the end of the run."""
    return next((t for t, text in lines if t >= after and text.startswith("| |")), lines[-1][0])


def report(measured: list[Phase]) -> str:
    total = sum(p.seconds for p in measured)
    installing = sum(p.seconds for p in measured if p.name == INSTALL)
    rows = [f"| {p.name} | {p.seconds:.1f} | {p.seconds / total:.0%} |" for p in measured]
    return "\n".join(["| phase | seconds | share |", "|---|---|---|", *rows, f"| total | {total:.1f} | 100% |", "",
                      f"installing {installing:.0f} s ({installing / total:.0%}), working {total - installing:.0f} s "
                      f"({(total - installing) / total:.0%}); working / installing = "
                      f"{(total - installing) / installing:.2f}" if installing else "nothing was installed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workdir", type=Path, help="the checkout to run in; cloned from this repository's HEAD "
                                                     "when it does not exist (default: a new temporary folder)")
    parser.add_argument("--command", default="make demo", help="what to time (default: make demo)")
    parser.add_argument("--log", type=Path, help="write the time-stamped output here (default: WORKDIR/demo.log)")
    parser.add_argument("--json", type=Path, help="also write the phases as JSON here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeclip-demo-")) / "kubeclip"
    if not workdir.exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workdir)], check=True)
    with open(args.log or workdir / "demo.log", "w") as log:
        code, lines = run_timed(args.command, workdir, log)
    measured = phases(lines)
    print(f"`{args.command}` in {workdir}: exit code {code}\n")
    print(report(measured))
    if args.json:
        args.json.write_text(json.dumps({"exit_code": code, "phases": [asdict(p) for p in measured]}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
