"""`orchestrate`: run a matrix, manage envs, regenerate reports.

Exit codes: 0 all runs ok or unsupported; 1 some runs failed; 2 a mistake in the input
(matrix, paths, digests, envs) found before anything ran; 130 interrupted."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.config import envs as envs_mod
from orchestrator.config.matrix import load_matrix, with_runs
from orchestrator.console import Display
from orchestrator.energy import meters
from orchestrator.energy.meters import broker
from orchestrator.errors import UserError
from orchestrator.report.tables import common_sessions, comparison_table, group_ratio_table
from orchestrator.report.tables import fmt as fmt_number
from orchestrator.results.compare import Comparison
from workers.contract.typed import to_dict


class _DefaultToRun(click.Group):
    """`orchestrate MATRIX` is `orchestrate run MATRIX`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Energy and latency per Stable Diffusion UNet step, per backend.

    \b
    orchestrate MATRIX.toml        run a study (same as `orchestrate run MATRIX.toml`)
    orchestrate check MATRIX.toml  validate it and print the plan, running nothing
    orchestrate envs sync [NAME]   build the worker environments
    orchestrate report DIR...      regenerate a session's report (md, html, figures, csv)
    orchestrate compare A B        two cells, or one cell in two sessions, with a verdict
    orchestrate schema             the matrix file's JSON Schema, for editors
    orchestrate selftest           what works on this host: every backend, device and meter, in minutes
    sudo orchestrate broker        this machine's root meter broker, for sessions and Ray nodes without sudo
    """


_env_option = click.option("--env", "env_overrides", multiple=True, metavar="NAME=PYTHON",
                           help="Use an existing interpreter for env NAME (repeatable).")


@cli.command()
@click.argument("matrix", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder that receives results/<session-id>/.")
@click.option("--resume", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Continue an interrupted session folder (same matrix).")
@click.option("--runs", type=int, help="Override timing.runs.")
@click.option("--quiet", is_flag=True, help="Only the summary table.")
@click.option("--nvml-check", is_flag=True,
              help="Debug: each worker also reads the NVML energy counter around its timed loop; runs record both.")
@click.option("--force-power", is_flag=True,
              help="Record energy even on battery power or in Low Power Mode; every affected run is flagged.")
@click.option("--ray", "ray_address", metavar="ADDRESS|local:N",
              help="Fan the runs out over a Ray cluster: ADDRESS of a running one, or local:N to start N simulated "
                   "nodes here (needs the fleet extra: uv sync --extra fleet).")
@_env_option
def run(matrix: Path, out: Path, resume: Path | None, runs: int | None, quiet: bool, nvml_check: bool,
        force_power: bool, ray_address: str | None, env_overrides: tuple[str, ...]) -> None:
    """Run every enabled cell of MATRIX, a fresh worker per run."""

    from orchestrator.results.store import SessionDir
    from orchestrator.run.session import Session, check_resume

    display = Display(quiet=quiet)
    envs = envs_mod.discover(envs_mod.parse_overrides(env_overrides))
    m = load_matrix(matrix, set(envs))
    meters.check(m, str(matrix))
    if runs is not None:
        m = with_runs(m, runs)
    signal.signal(signal.SIGTERM, _interrupt)
    sdir = None
    if resume is not None:
        sdir = SessionDir(resume)
        check_resume(sdir, m)
    if ray_address is not None:
        from orchestrator.fleet.dispatch import run_fleet
        from orchestrator.fleet.node import Job, matrix_reference

        job = Job(matrix_reference(matrix), m.timing.runs, env_overrides, nvml_check, force_power)
        result = run_fleet(m, envs, display, ray_address, job, out, sdir)
    else:
        result = Session(m, envs, display, nvml_check=nvml_check, force_power=force_power).run(out, resume=sdir)
    display.summary_table(result.summary)
    display.log(f"results: {result.dir.root}  (report.html, report.md, figures/, summary.json, runs.csv, runs.jsonl)")
    if result.interrupted:
        sys.exit(130)
    sys.exit(1 if result.n_failed else 0)


@cli.command()
@click.argument("matrix", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder a session would write results/<session-id>/ into (checked writable).")
@click.option("--runs", type=int, help="Override timing.runs.")
@click.option("--from", "previous", type=click.Path(path_type=Path),
              help="Estimate the duration from this session folder's time budget "
                   "(default: the newest session of the same matrix under --out).")
@_env_option
def check(matrix: Path, out: Path, runs: int | None, previous: Path | None, env_overrides: tuple[str, ...]) -> None:
    """Validate MATRIX, resolve its envs and paths and print the plan and its estimated duration;
    nothing runs (exit 0 or 2)."""
    from orchestrator.run.check import check_matrix

    envs = envs_mod.discover(envs_mod.parse_overrides(env_overrides))
    m = load_matrix(matrix, set(envs))
    meters.check(m, str(matrix))
    check_matrix(m if runs is None else with_runs(m, runs), envs, out, Display(), previous)


@cli.group()
def envs() -> None:
    """Worker environments (one uv project per toolchain under envs/)."""


@envs.command("sync")
@click.argument("names", nargs=-1)
def envs_sync(names: tuple[str, ...]) -> None:
    """uv sync --locked each env (all when no NAME is given)."""
    known = envs_mod.discover()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown env(s): {', '.join(unknown)} (known: {', '.join(known)})")
    chosen = [known[n] for n in names] if names else list(known.values())
    display = Display()
    failed = []
    for i, env in enumerate(chosen, 1):
        display.log(f"[{i}/{len(chosen)}] syncing {env.name}")
        try:
            seconds = envs_mod.sync(env, display.log)
        except UserError as e:
            if names:  # asked for by name: its failure is the command's
                raise
            display.warn(f"[{i}/{len(chosen)}] {env.name}: not synced: {e}")
            failed.append(env.name)
            continue
        display.log(f"[{i}/{len(chosen)}] {env.name}: synced in {seconds:.1f} s ({env.python})")
    if failed:  # syncing all: the others are synced, and the ones that could not be are named
        raise UserError(f"not synced: {', '.join(failed)} (see above)")


@envs.command("list")
@_env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def envs_list(env_overrides: tuple[str, ...], as_json: bool) -> None:
    """Name, python, synced or not, lock sha256, key package versions (installed, or locked when not built)."""
    rows: list[dict[str, Any]] = []
    for env in envs_mod.discover(envs_mod.parse_overrides(env_overrides)).values():
        packages, source = env.package_versions()
        rows.append({"name": env.name, "python": env.python_label(), "python_path": str(env.python),
                     "synced": env.synced, "lock_sha256": env.lock_sha256(), "packages": packages,
                     "packages_from": source})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table()
    for col in ("env", "python", "synced", "lock sha256", "packages (installed, or locked when not synced)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["python"], "yes" if r["synced"] else "no", (r["lock_sha256"] or "–")[:16],
                  (", ".join(f"{k} {v}" for k, v in sorted(r["packages"].items())) + f" ({r['packages_from']})")
                  if r["packages"] else "–")
    Display().out.print(t)


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Write the reports here instead of into each session folder (one subfolder per session when several).")
@click.option("--baseline", metavar="CELL", help="Compare every other cell with this one (overrides [report] baseline).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: print summary.json's content and write nothing, unless --write or --out.")
@click.option("--write", is_flag=True, help="With --format json: also write the report files.")
def report(dirs: tuple[Path, ...], out: Path | None, baseline: str | None, fmt: str, write: bool) -> None:
    """Regenerate summary.json, runs.csv, figures/, report.md and report.html of session folder(s)."""
    from orchestrator.report.write import derive, write_report
    from orchestrator.results.store import SessionDir

    display = Display()
    not_sessions = [d for d in dirs if not SessionDir(d).has_session() and not (d / "runs.jsonl").is_file()]
    if not_sessions:
        raise UserError(*(f"{d}: neither session.json nor runs.jsonl; not a session folder" for d in not_sessions))
    summaries, skipped = [], []
    for k, d in enumerate(dirs, 1):
        target = None if out is None else (out if len(dirs) == 1 else out / d.resolve().name)
        if len(dirs) > 1:
            display.log(f"[{k}/{len(dirs)}] {d}")
        try:
            if fmt == "json" and not write and out is None:  # printing a summary changes no file
                summary = derive(SessionDir(d), baseline).summary
                for line in (*summary.problems, *summary.warnings):
                    display.warn(line)
                summaries.append(summary)
                continue
            rep = write_report(SessionDir(d), target, baseline)
        except UserError as e:  # this folder's report is named as not written; the others go on
            skipped.append(str(d))
            for line in e.lines:
                display.warn(line)
            continue
        for line in (*rep.summary.problems, *rep.summary.warnings):
            display.warn(line)
        for f in rep.inputs.figures:
            if f.skipped:
                display.log(f"{f.title}: left out: {f.skipped}")
        summaries.append(rep.summary)
        if fmt == "table":
            display.summary_table(rep.summary)
            if rep.inputs.comparisons:
                _print_comparisons(display, rep.inputs.comparisons, f"against {rep.inputs.baseline}")
            display.log(f"report: {rep.out / 'report.html'} (report.md, summary.json, runs.csv, figures/)")
    if fmt == "json" and summaries:
        data = [to_dict(s) for s in summaries]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    if skipped:
        raise UserError(f"no report written for {', '.join(skipped)} (see above)")


@cli.command("recompute-energy")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
def recompute_energy_cmd(dirs: tuple[Path, ...]) -> None:
    """Recompute each run's energy from the meter samples the session saved, with this harness's
    arithmetic (rewrites runs.jsonl; session.json records it), then regenerate the report."""
    from orchestrator.report.write import write_report
    from orchestrator.results.recompute import recompute_energy
    from orchestrator.results.store import RUNS, SessionDir

    display = Display()
    missing = [d for d in dirs if not (d / RUNS).is_file()]
    if missing:
        raise UserError(*(f"{d}: no {RUNS}; not a session folder" for d in missing))
    skipped = []
    for d in dirs:
        sdir = SessionDir(d)
        try:
            done = recompute_energy(sdir)
        except (UserError, OSError) as e:  # this folder is named and left as it was; the others go on
            skipped.append(str(d))
            display.warn(f"{d}: left as it was: " + ("; ".join(e.lines) if isinstance(e, UserError)
                                                       else f"{e.filename}: {e.strerror}"))
            continue
        for line in done.problems:
            display.warn(line)
        if not done.runs:
            display.warn(f"{d}: no run has saved meter samples (samples/<cell>/run-NNN.meter.json); nothing changed")
            continue
        display.log(f"{d}: energy recomputed for {done.runs} run(s), {len(done.changed)} changed")
        for cell, run_index, before, after in done.changed:
            display.log(f"  {cell} run {run_index}: {fmt_number(before)} -> {fmt_number(after)} J/step net")
        try:
            rep = write_report(sdir, None, None)
        except UserError as e:
            skipped.append(str(d))
            display.warn("; ".join(e.lines))
            continue
        display.log(f"report: {rep.out / 'report.html'} (report.md, summary.json, runs.csv, figures/)")
    if skipped:
        raise UserError(f"not done for {', '.join(skipped)} (see above)")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The merged session folder (new, or an empty folder).")
def merge(dirs: tuple[Path, ...], out: Path) -> None:
    """Merge sessions of one matrix, each run on its own host, into one fleet session and report it."""
    from orchestrator.report.write import write_report
    from orchestrator.results.merge import merge as merge_sessions

    display = Display()
    merged = merge_sessions(list(dirs), out)
    for line in merged.problems:
        display.warn(line)
    display.log(f"{out}: {merged.runs} run(s) from {len(dirs)} sessions on {len(merged.hosts)} host(s): "
                f"{', '.join(merged.hosts)}")
    rep = write_report(merged.sdir)
    display.summary_table(rep.summary)
    for spread in rep.summary.host_spreads:
        display.log(f"{spread.cell_id} {spread.metric} across hosts: {spread.verdict}")
    display.log(f"report: {rep.out / 'report.html'} (report.md, summary.json, runs.csv, figures/)")


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def compare(a: str, b: str, fmt: str) -> None:
    """B against A: two cells of a session (DIR:CELL_A DIR:CELL_B), the same cell in two
    sessions (DIR_A DIR_B:CELL, or DIR_A DIR_B for every common cell), or a group's cells or one
    cell against a group of the matrix's `[report] groups` (DIR:GROUP DIR:GROUP_OR_CELL)."""
    from orchestrator.report.compare_sessions import compare_sides, group_sides, parse_side

    side_a, side_b = parse_side(a), parse_side(b)
    display = Display()
    for line in (*side_a.problems, *side_b.problems):
        display.warn(line)
    ratios = group_sides(side_a, side_b)
    if ratios is not None:
        if not ratios:
            raise UserError("nothing to compare: no cell of B and no cell of group A has a median")
        if fmt == "json":
            click.echo(json.dumps([to_dict(r) for r in ratios], indent=2))
            return
        display.table(group_ratio_table(ratios), f"B against group {side_a.cell} (ratios are B's cell / A's cell)")
        for r in ratios:
            click.echo(r.statement)
        return
    comparisons = compare_sides(side_a, side_b)
    if not comparisons:
        raise UserError("nothing to compare: a side has no ok run")
    if fmt == "json":
        click.echo(json.dumps([to_dict(c) for c in comparisons], indent=2))
        return
    sessions = common_sessions(comparisons)
    _print_comparisons(display, comparisons, f"B ({sessions[0]}) against A ({sessions[1]}) (ratios are B / A)"
                       if sessions else "B against A (ratios are B / A)")


def _print_comparisons(display: Display, comparisons: list[Comparison], title: str) -> None:
    """The table, then each verdict on a line of its own (a narrow terminal wraps table cells)."""
    display.table(comparison_table(comparisons), title)
    for c in comparisons:
        click.echo(f"{c.metric}: {c.other} vs {c.baseline}: {c.verdict}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results") / "selftest", show_default=True,
              help="Folder that receives the self-test's session folder, with selftest.json in it.")
@_env_option
def selftest(out: Path, env_overrides: tuple[str, ...]) -> None:
    """Check every backend, device and meter this host has on the tiny synthetic UNet (a few
    minutes): a capability table, and selftest.json to attach to a bug report. Exit 1 when a
    check fails (unsupported is not a failure)."""
    from orchestrator.selftest import capability_table, run_selftest

    display = Display()
    signal.signal(signal.SIGTERM, _interrupt)
    report = run_selftest(out, display, envs_mod.parse_overrides(env_overrides))
    display.table(capability_table(report), "selftest")
    display.log(f"selftest {'passed' if report['passed'] else 'FAILED'}; attach {report['path']} to a bug report")
    sys.exit(0 if report["passed"] else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """What this host can measure: meters, backends and devices, host state; reasons where not."""
    from orchestrator.doctor import diagnose

    r = diagnose()
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    h = r["host"]
    click.echo(f"host: {h['cpu']} ({h['cpu_count_logical']} logical CPUs), {h['os']}; GPUs: {', '.join(h['gpus']) or 'none'}")
    pre = r["preflight"]
    power = pre["power"]
    facts = ", ".join(f"{k} {v}" for k, v in power.items() if k != "problems" and v is not None) or "no battery reported"
    click.echo(f"power: {'; '.join(power['problems']) or 'ok'} ({facts})")
    if pre["thermal"] is not None:
        click.echo(f"thermal (pmset -g therm): {pre['thermal']}")
    if pre["gpu_throttle"] is not None:
        click.echo(f"GPU 0 slowdowns now: {', '.join(pre['gpu_throttle']) or 'none'}")
    click.echo(f"load average (1, 5, 15 min): {pre['load_average']}")
    click.echo(f"power meters (auto would use: {r['auto_meter'] or 'none'}):")
    for name, m in r["meters"].items():
        click.echo(f"  {name:13s} {'yes' if m['available'] else 'no '}  {m['detail']}")
    nb = r["meter_broker"]
    if nb["answers"]:
        pid = f" (pid {nb['pid']})" if nb["pid"] is not None else ""
        click.echo(f"  this machine's meter broker answers at {nb['socket']}{pid}; it runs "
                   f"{nb['powermetrics'] or 'nothing: it finds no powermetrics'}")
    else:
        click.echo(f"  no meter broker answers at {nb['socket']} (sudo orchestrate broker starts one)")
    click.echo("backends:")
    for name, b in r["backends"].items():
        for entry in b["envs"].values() if "envs" in b else [b]:
            click.echo(f"  {name:13s} {_backend_line(entry)}")


@cli.command("broker")
@click.option("--socket", "socket_path", default=broker.SOCKET, show_default=True, metavar="PATH",
              help="The Unix socket to listen at (its folder is made the invoking user's, mode 0700).")
def broker_command(socket_path: str) -> None:
    """(sudo) Run this machine's root meter broker until Ctrl-C or SIGTERM: it starts and stops
    powermetrics, and nothing else, for the user who ran sudo, so that their sessions without
    sudo and their Ray node's actors record energy (CDB_BROKER_SOCKET tells them another PATH)."""
    sys.exit(broker.listen(socket_path))


@cli.command()
def schema() -> None:
    """Print the matrix file's JSON Schema (draft 2020-12), for editors that validate TOML."""
    from orchestrator.config.schema import matrix_schema

    click.echo(json.dumps(matrix_schema(), indent=2))


def _backend_line(b: dict) -> str:
    if "devices" not in b:
        return (f"env {b['env']}: " if "env" in b else "") + (b.get("error") or b["detail"])
    d = b["devices"]
    versions = ", ".join(f"{k} {v}" for k, v in b["versions"].items())
    if "converters" in d:  # coreml: what converts here, and whether this host can predict
        return (f"env {b['env']}: converters {', '.join(d['converters']) or 'none'}; "
                f"prediction: {'yes' if d['predict'] else 'no, ' + d['predict_detail']}; {versions}")
    devices = "; ".join(f"{k}: {_device_text(v)}" for k, v in d.items())
    return f"env {b['env']}: {devices}; {versions}"


def _device_text(value) -> str:
    """A backend probe's answer for one device kind: a name, a list of names, or yes/no."""
    if isinstance(value, list):
        return ", ".join(value) or "no"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value) or "no"


def _interrupt(signum, frame) -> None:
    """SIGTERM ends a session like Ctrl-C: the worker is stopped, finished runs stay, the
    summary is written and the session can be resumed."""
    raise KeyboardInterrupt


def main() -> None:
    if sys.argv[1:2] != ["broker"]:  # the node broker is the root part itself: it forks and drops nothing
        broker.separate()  # first: under sudo, fork the root meter broker and become the invoking user
    try:
        cli.main(standalone_mode=False)
    except UserError as e:
        click.echo(e.printed(), err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
