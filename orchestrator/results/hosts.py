"""Which host each run ran on: a fleet study (`orchestrate merge`) measures one cell on several
machines, and a resumed session may continue on another one."""

from __future__ import annotations

from orchestrator.results.records import RunRecord, SessionRecord

UNKNOWN = "unknown host"


def hostname(host: dict | None) -> str:
    return str((host or {}).get("hostname") or UNKNOWN)


def run_host(run: RunRecord, session: SessionRecord | None) -> str:
    """The run's recorded host, else the host the session ran on when the run started: a resume
    may have continued on another machine (`resumes`)."""
    if run.host:
        return run.host
    if session is None:
        return UNKNOWN
    host = session.provenance.get("host")
    for resume in session.resumes:
        at = resume.get("at")
        if isinstance(at, str) and run.started_at and at <= run.started_at and resume.get("host"):
            host = resume["host"]
    return hostname(host)

