"""`stabench doctor STORE`: what in a store readers would skip, refuse or be locked out of, named file by file.

Pure checks: nothing in the store is written, moved or locked. Content is read the way stabench's own readers read
it, never more trustingly: records and owner files as JSON, Optuna journals line by line as JSON (never through
Optuna), checkpoints with `read_checkpoint` (`torch.load(weights_only=True)`, so a planted pickle cannot run), and
Ray's own folder (`<store>/ray`, Ray's pickles) not at all. Permissions are judged by the model of docs/security.md:
a store its owner opened to the group (the root folder group-searchable) needs its files group-readable; a store
that looks shared (the root group-writable or set-group-id, or files of several owners) also needs its folders,
journals and lock files group-writable and everything in the store's group.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import socket
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engine.state import CHECKPOINT, read_checkpoint
from ..errors import UserError
from ..files import read_untrusted_json
from ..records.record import record_problem
from ..records.store import RECORD_BYTES
from .core import OWNER
from .workers import read_owner, same_machine, worker_is_gone

RECORD = "record.json"
RUN_FILES = (RECORD, "config.yaml", CHECKPOINT, OWNER)  # a direct subfolder holding one of these is a run folder
RAY_DIR = "ray"  # Ray Tune's experiment folder: Ray's pickles, never opened here
JOURNAL_SUFFIX = ".journal"

# The kinds of findings, in report order, with their headings.
KINDS = {
    "record": "records readers skip",
    "unfinished": "run folders without a record",
    "checkpoint": "checkpoints that fail validation",
    "owner": "owner files",
    "journal": "Optuna journals",
    "score": "score files",
    "unreadable": "files you cannot read",
    "permission": "permissions that lock teammates out",
}


@dataclass(frozen=True)
class Finding:
    """One thing found at `path`: a problem (counted; the exit code is 1) or a note (`problem=False`: e.g. a trial
    that is still running), with a `fix` where one command or step fixes it."""

    kind: str
    path: str
    message: str
    fix: str | None = None
    problem: bool = True

    def line(self) -> str:
        """The finding as one line: path, what is wrong, and the fix."""
        return f"{self.path}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    """What `examine` found in a store, and what it looked at."""

    store: str
    shared: bool  # judged as a shared store (folders, journals and locks need group write)
    group_visible: bool  # judged as open to the group (files need group read)
    checked: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if not f.problem]

    def counts(self) -> dict[str, int]:
        """Problems per kind (kinds without any left out), in report order."""
        return {k: n for k in KINDS if (n := sum(f.kind == k for f in self.problems))}

    def to_dict(self) -> dict:
        """The report as plain JSON data (`stabench doctor --json`)."""
        return {
            "store": self.store,
            "shared": self.shared,
            "group_visible": self.group_visible,
            "checked": self.checked,
            "counts": self.counts(),
            "problems": [asdict(f) for f in self.problems],
            "notes": [asdict(f) for f in self.notes],
        }


@dataclass(frozen=True)
class Entry:
    """A file or folder of the store (never followed if it is a symbolic link)."""

    path: Path
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)


def examine(root: str | Path, shared: bool | None = None) -> Report:
    """Check the store at `root` (an existing folder) without changing anything in it. `shared` forces (True) the
    shared-store permission checks; None decides from the store itself."""
    root = Path(root)
    findings: list[Finding] = []
    entries = walk(root, findings)
    root_st = os.stat(root)
    owners = {e.st.st_uid for e in entries if not stat.S_ISLNK(e.st.st_mode)} | {root_st.st_uid}
    looks_shared = bool(root_st.st_mode & (stat.S_IWGRP | stat.S_ISGID)) or len(owners) > 1
    shared = looks_shared if shared is None else shared
    report = Report(str(root), shared, shared or bool(root_st.st_mode & stat.S_IXGRP), findings=findings)

    readable = [e for e in entries if e.is_file and can_read(e.path)]
    by_name: dict[str, list[Entry]] = {}
    for e in entries:
        by_name.setdefault(e.path.name, []).append(e)
    runs = [e.path for e in entries if e.is_dir and e.path.parent == root and any((e.path / f).exists()
                                                                                  for f in RUN_FILES)]  # fmt: skip

    findings += not_regular(entries)
    findings += [f for e in readable if e.path.name == RECORD and e.path.parent.parent == root
                 for f in check_record(e.path)]  # fmt: skip
    findings += [f for run in runs if not (run / RECORD).exists() for f in check_unfinished(run)]
    findings += [f for e in readable if e.path.name == CHECKPOINT for f in check_checkpoint(e.path)]
    findings += [f for e in readable if e.path.name == OWNER for f in check_owner(e.path)]
    journals = [e for e in readable if e.path.name.endswith(JOURNAL_SUFFIX)]
    findings += [f for e in journals for f in check_journal(e.path)]
    scores = [e for e in readable if e.path.name.startswith("score-") and e.path.suffix == ".json"]
    findings += [f for e in scores for f in check_score(e.path)]
    findings += [f for e in [Entry(root, root_st), *entries] for f in check_permissions(e, report, root_st)]
    if (root / RAY_DIR).is_dir():
        findings.append(Finding("permission", str(root / RAY_DIR), "Ray's experiment folder (Ray's own pickles) was "
                                "not opened; keep it writable only by people you trust (docs/security.md)",
                                problem=False))  # fmt: skip
    if not runs and not journals:
        findings.append(Finding("record", str(root), "no run folders and no journals here: is this a stabench store?",
                                problem=False))  # fmt: skip

    report.checked = {
        "run folders": len(runs),
        "records": sum(e.path.name == RECORD for e in readable),
        "checkpoints": sum(e.path.name == CHECKPOINT for e in readable),
        "owner files": sum(e.path.name == OWNER for e in readable),
        "journals": len(journals),
        "files": sum(e.is_file for e in entries),
        "folders": 1 + sum(e.is_dir for e in entries),
    }
    order = list(KINDS)
    report.findings = sorted(findings, key=lambda f: (not f.problem, order.index(f.kind), f.path))
    return report


def walk(root: Path, findings: list[Finding]) -> list[Entry]:
    """Every file and folder under `root` (not `root` itself, not into `<root>/ray`, never through a symbolic link);
    a folder that cannot be listed is a finding."""
    entries: list[Entry] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda c: c.name)
        except OSError as e:
            if not can_read(folder):  # check_permissions names it, with its mode and owner
                continue
            findings.append(Finding("unreadable", str(folder), f"cannot be listed ({e.strerror or e}){owned(folder)}; "
                                    "nothing under it was checked", fix=ask_owner(folder, "chmod g+rx")))  # fmt: skip
            continue
        for child in children:
            try:
                entry = Entry(Path(child.path), child.stat(follow_symlinks=False))
            except OSError:  # removed meanwhile (a live store)
                continue
            entries.append(entry)
            if entry.is_dir and not (folder == root and child.name == RAY_DIR):
                stack.append(entry.path)
    return sorted(entries, key=lambda e: e.path)


def can_read(path: Path) -> bool:
    """Can this user read `path` (search it, for a folder)?"""
    return os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def owned(path: Path) -> str:
    """', owned by NAME' when someone else owns `path`."""
    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return ""
    return "" if uid == os.geteuid() else f", owned by {user_name(uid)}"


def ask_owner(path: Path, chmod: str) -> str:
    """The command that fixes `path`'s mode, and who can run it."""
    command = f"{chmod} {shlex.quote(str(path))}"
    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return command
    if uid == os.geteuid() or os.geteuid() == 0:
        return command
    return f"{user_name(uid)} (its owner) or root runs {command}"


def not_regular(entries: list[Entry]) -> list[Finding]:
    """A store file stabench reads that is a symbolic link, a FIFO or a device: readers would follow or block on
    it, and stabench never writes one."""
    out = []
    for e in entries:
        name = e.path.name
        kind = {RECORD: "record", CHECKPOINT: "checkpoint", OWNER: "owner"}.get(name)
        kind = kind or ("journal" if name.endswith(JOURNAL_SUFFIX) else None)
        if kind is None or e.is_file or e.is_dir:
            continue
        if stat.S_ISLNK(e.st.st_mode):
            what = f"a symbolic link to '{os.readlink(e.path)}'"
        else:
            what = "a FIFO" if stat.S_ISFIFO(e.st.st_mode) else "not a regular file"
        out.append(Finding(kind, str(e.path), f"is {what}, which stabench never writes; readers would follow it, "
                           "doctor did not", fix="replace it with the file it stands for, or remove it"))  # fmt: skip
    return out


def check_record(path: Path) -> list[Finding]:
    """A record.json that readers (leaderboards, sweeps, confirm) would skip, and why (`Store._read`'s rule)."""
    try:
        problem = record_problem(read_untrusted_json(path, RECORD_BYTES))
    except (OSError, ValueError) as e:  # unreadable, a FIFO, too large, not JSON: truncated by a copy, or foreign
        problem = f"not a JSON record ({type(e).__name__}: {e})"
    if problem is None:
        return []
    return [Finding("record", str(path), f"readers skip it: {problem}",
                    fix="restore it from a copy, or remove its run folder to train that seed again")]  # fmt: skip


def check_unfinished(run: Path) -> list[Finding]:
    """A run folder without a record: a trial still running (a note), or one that was killed (a problem) when its
    owner file shows its process is gone; a note where that cannot be told from here."""
    resumable = (run / CHECKPOINT).is_file()
    then = (f"`stabench train --resume {shlex.quote(str(run))}` continues it from its checkpoint (a retried sweep "
            "trial takes it over by itself)") if resumable else \
        "it has no checkpoint, so nothing to resume: remove the folder once nobody needs its files"  # fmt: skip
    owner, problem = read_owner(run / OWNER)
    if owner is None:
        why = "no owner file (a `stabench train` run)" if not (run / OWNER).exists() else "its owner file is damaged"
        return [Finding("unfinished", str(run), f"no record and {why}: running or killed, cannot tell; {then}",
                        problem=False)]  # fmt: skip
    who = f"pid {owner['pid']} on {owner['host']}"
    if same_machine(owner):
        if not worker_is_gone(owner, heartbeats=False):
            return [Finding("unfinished", str(run), f"still running ({who})", problem=False)]
        return [Finding("unfinished", str(run), f"killed: its process ({who}) is gone", fix=then)]
    if owner["host"] == socket.gethostname():
        return [Finding("unfinished", str(run), f"killed: this machine restarted since its process ({who}) ran",
                        fix=then)]  # fmt: skip
    return [Finding("unfinished", str(run), f"no record; its process ({who}) runs on another machine, so whether it "
                    f"still runs cannot be told from here; if it was killed, {then}", problem=False)]  # fmt: skip


def check_checkpoint(path: Path) -> list[Finding]:
    """A checkpoint.pt that `train --resume`, `score` or a retry would refuse (loaded with weights_only: a planted
    pickle is refused before anything in it runs)."""
    try:
        read_checkpoint(path, "store")
    except UserError as e:
        message = e.message.removeprefix(f"'{path}' ")
        return [Finding("checkpoint", str(path), message,
                        fix="move it aside and run that trial again from the start")]  # fmt: skip
    return []


def check_owner(path: Path) -> list[Finding]:
    """An owner.json that is not what `claim` writes: a retry will not take its run folder over."""
    owner, problem = read_owner(path)
    if owner is not None:
        return []
    message = (problem or "").removeprefix(f"'{path}' ")
    return [Finding("owner", str(path), f"{message}; a retried trial will not take its run folder over")]


def check_journal(path: Path, shown: int = 3) -> list[Finding]:
    """Lines of an Optuna journal that are not journal entries (JSON objects with an `op_code`), read with json
    only: Optuna stops loading the study at the first such line (a last line without its newline is a write in
    progress, or a writer killed mid-line: the next entry appended to it makes a broken line)."""
    bad = []
    n = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                bad.append(f"line {n} ends without a newline (a write in progress, or a writer killed mid-line)")
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                bad.append(f"line {n} is not JSON ({e})")
                continue
            if not (isinstance(entry, dict) and isinstance(entry.get("op_code"), int)):
                bad.append(f"line {n} is not a journal entry (a JSON {type(entry).__name__} without an op_code)")
    if not bad:
        return []
    more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
    return [Finding("journal", str(path), f"{'; '.join(bad[:shown])}{more}, of {n} lines: Optuna cannot load this "
                    "study past the first one", fix="restore the journal from a copy")]  # fmt: skip


def check_score(path: Path) -> list[Finding]:
    """A score-*.json (`stabench score`'s result) that is not a JSON object."""
    try:
        score = read_untrusted_json(path, RECORD_BYTES)
    except (OSError, ValueError) as e:
        return [Finding("score", str(path), f"not JSON ({type(e).__name__}: {e})", fix="run `stabench score` again")]
    if not isinstance(score, dict):
        return [Finding("score", str(path), f"a JSON {type(score).__name__}, expected an object",
                        fix="run `stabench score` again")]  # fmt: skip
    return []


def check_permissions(e: Entry, report: Report, root_st: os.stat_result) -> list[Finding]:
    """What about `e`'s owner, group and mode locks out this user or the store's group (docs/security.md)."""
    if stat.S_ISLNK(e.st.st_mode):
        return []
    mode, path, out = stat.S_IMODE(e.st.st_mode), e.path, []
    shown = f"mode {mode:04o}{owned(path)}"
    if not can_read(path):
        out.append(Finding("unreadable", str(path), f"you ({user_name(os.geteuid())}) cannot read it ({shown}); "
                           "readers that need it fail", fix=ask_owner(path, "chmod g+r" + "x" * e.is_dir)))  # fmt: skip
    if e.path.name == RAY_DIR and e.path.parent == Path(report.store):
        need = 0  # Ray's folder: the group needs nothing (docs/security.md), only the world check below
    elif e.is_dir:
        need = (stat.S_IRGRP | stat.S_IXGRP if report.group_visible else 0) | (stat.S_IWGRP if report.shared else 0)
    else:
        writes = e.path.name.endswith((JOURNAL_SUFFIX, ".lock"))  # appended to or reopened by every sweeper
        need = (stat.S_IRGRP if report.group_visible else 0) | (stat.S_IWGRP if report.shared and writes else 0)
    if missing := need & ~mode:
        letters = "".join(c for bit, c in ((stat.S_IRGRP, "r"), (stat.S_IWGRP, "w"), (stat.S_IXGRP, "x"))
                          if missing & bit)  # fmt: skip
        who = "teammates cannot " + {"r": "read it", "w": "write it", "x": "enter it"}[letters[0]]
        if e.is_dir and "w" in letters:
            who = "teammates cannot " + ("create files in it" if letters == "w" else "use it")
        elif "w" in letters:
            who = "teammates cannot append to it or reopen it" if letters == "w" else "teammates cannot use it"
        out.append(Finding("permission", str(path), f"{shown}: {who}", fix=ask_owner(path, f"chmod g+{letters}")))
    if report.shared and e.st.st_gid != root_st.st_gid:
        out.append(Finding("permission", str(path), f"group {group_name(e.st.st_gid)}, not the store's group "
                           f"{group_name(root_st.st_gid)}: teammates may be outside it",
                           fix=ask_owner(path, f"chgrp {group_name(root_st.st_gid)}")))  # fmt: skip
    if mode & stat.S_IWOTH and not (e.is_dir and mode & stat.S_ISVTX):
        out.append(Finding("permission", str(path), f"{shown}: anyone on this machine can write it (and plant or "
                           "replace files stabench reads)", fix=ask_owner(path, "chmod o-w")))  # fmt: skip
    return out


def render(report: Report) -> list[str]:
    """The report as text lines: what was checked, one line per finding grouped by kind, and the counts."""
    kind_of_store = "shared" if report.shared else "open to its group" if report.group_visible else "private"
    checked = ", ".join(f"{what} {n}" for what, n in report.checked.items())
    lines = [f"store {report.store} ({kind_of_store}); checked: {checked}"]
    for kind, title in KINDS.items():
        found = [f for f in report.problems if f.kind == kind]
        if found:
            lines += ["", f"{title} ({len(found)})", *(f"  {f.line()}" for f in found)]
    if report.notes:
        lines += ["", f"notes ({len(report.notes)})", *(f"  {f.line()}" for f in report.notes)]
    counts = report.counts()
    if counts.get("permission", 0) > 1:
        fix_all = "chmod -R g+rwX" if report.shared else "chmod -R g+rX"
        lines += ["", f"to fix every mode at once: {fix_all} {shlex.quote(report.store)} (docs/security.md)"]
    total = sum(counts.values())
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    lines += ["", f"{total} problem{'s' * (total != 1)}: {summary}" if total else "no problems found"]
    return lines
