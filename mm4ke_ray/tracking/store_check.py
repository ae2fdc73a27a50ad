"""Is a `sqlite:///` tracking URI an MLflow store? Checked before MLflow opens it.

MLflow's SQLite store creates its schema in whatever file it is pointed at: a 0-byte file or
another application's database would be changed by a command that only reads (`pareto`,
`export`, `--warm-start`), and a sweep would write its runs into it. The file is read here with
Python's own sqlite3 in read-only mode, so this check itself changes nothing, with one exception:
a writer killed mid-transaction (a SIGKILLed sweep driver) leaves a hot rollback journal, which a
read-only connection cannot replay. Then the file is opened read-write once, and SQLite rolls the
unfinished transaction back: the database returns to its last commit, as any writer would make it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mm4ke_ray.errors import UserError

SQLITE_PREFIX = "sqlite:///"
# Tables every MLflow store has (its alembic migrations create them in the first revision).
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "metrics", "params", "tags"})
_SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other URIs)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]).expanduser()


def absolute_uri(uri: str, base: str | Path | None = None) -> str:
    """A relative `sqlite:///` URI made absolute (against `base`, default the working directory),
    so a sweep resumed from another directory opens the same store; other URIs unchanged."""
    db = sqlite_path(uri)
    if db is None or db.is_absolute():
        return uri
    query = uri[len(SQLITE_PREFIX) + len(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]):]
    return SQLITE_PREFIX + str((Path(base) if base else Path.cwd()).resolve() / db) + query


def store_problem(uri: str, create: bool) -> str | None:
    """Why `uri` may not be opened as an MLflow store (None when it may, or it is not SQLite).

    `create`: a writer (a new sweep, a replay) may create a store at a path where nothing is;
    a reader (`pareto`, `export`, a warm start, a resume) needs an existing MLflow database.
    An existing file must be an MLflow database: never an empty file, another application's
    database, or a truncated or corrupted one (those fail later, after side effects).
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    if not db.exists():
        return None if create else f"no MLflow database at '{db}' (check the path; sweeps write runs/mlflow.db by default)"
    if not db.is_file():
        return f"'{db}' is not a file"
    with db.open("rb") as f:
        magic = f.read(len(_SQLITE_MAGIC))
    if not magic:
        return f"'{db}' is an empty file, not an MLflow database; give a new path (a sweep creates the store) or the sweep's database"
    if magic != _SQLITE_MAGIC:
        return f"'{db}' is not a SQLite database, so not an MLflow store; give the sweep's database or a new path"
    try:
        try:
            tables, check = _read_schema(db, "ro")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) or not _has_hot_journal(db):
                raise
            tables, check = _read_schema(db, "rw")  # rolls the killed writer's transaction back
    except sqlite3.Error as exc:
        return f"'{db}' cannot be read as a SQLite database ({exc}); it is truncated or corrupted: restore it from a copy"
    if missing := MLFLOW_TABLES - tables:
        return (f"'{db}' is a SQLite database but not an MLflow store (no table {', '.join(sorted(missing))}); "
                f"it is left as it is: give the sweep's database or a new path")
    if check != "ok":
        return f"'{db}' is damaged (SQLite integrity check: {check}); restore it from a copy"
    return None


def _read_schema(db: Path, mode: str) -> tuple[set[str], str]:
    con = sqlite3.connect(f"file:{db}?mode={mode}", uri=True)
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return tables, con.execute("PRAGMA quick_check(1)").fetchone()[0]
    finally:
        con.close()


def _has_hot_journal(db: Path) -> bool:
    """A non-empty rollback journal or write-ahead log next to the file: a writer stopped mid-way."""
    return any(p.is_file() and p.stat().st_size > 0 for p in (Path(f"{db}-journal"), Path(f"{db}-wal")))


def check_store(uri: str, create: bool, what: str = "--tracking-uri") -> None:
    """UserError naming `what` when `store_problem` finds one."""
    if problem := store_problem(uri, create):
        raise UserError(f"{what} {uri!r}: {problem}")
