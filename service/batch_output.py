"""Where ``swishnet batch`` writes: shards of rows in one folder, resumable, each file once.

A row is ``swishnet classify --format json``'s object (``FileResult.to_dict()``)
plus ``error``: null for a classified file; for a file that could not be
classified, its message, with the other fields null. Rows go to shards named
``part-RUN-NNNNN.jsonl`` (JSON lines) or ``.parquet``, at most ``shard_rows``
rows each. A shard is written under a ``.partial`` name and renamed when it
is full or the run ends, so a finished shard is never half-written:

- JSON lines are appended and flushed row by row. If the run dies, the next
  run keeps the complete lines of the ``.partial`` shard and renames it.
- Parquet rows wait in memory until their shard is written whole; a dead
  run's ``.partial`` Parquet shard is deleted (its files are classified again).

A re-run skips every file that has a row in a finished shard (with
``retry_errors``, every file whose row has no error). One run at a time per
folder: a lock file says so.

pyarrow (Parquet) is imported only when Parquet is read or written.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
from pathlib import Path
from typing import IO, Any, Sequence

log = logging.getLogger(__name__)

ROW_FIELDS = ("file", "duration", "label", "probs", "segments", "error")
FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}
PARTIAL = ".partial"
LOCK_NAME = ".swishnet-batch.lock"


class OutputError(Exception):
    """The output folder cannot be used (not creatable, or another run holds it)."""


def error_row(file: str, message: str) -> dict:
    """The row of a file that could not be classified."""
    return {**dict.fromkeys(ROW_FIELDS), "file": file, "error": message}


def new_run_id() -> str:
    """Sortable and unique: the UTC start time and a random suffix."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class OutputLock:
    """An exclusive lock on the output folder for one run (POSIX advisory lock, released by the OS on exit)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._handle: IO[str] | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        handle = self.path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(f"another 'swishnet batch' is writing to {self.path.parent}") from None
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()


def prepare(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {folder}: {error.strerror}") from None


def done_files(folder: Path, retry_errors: bool = False) -> set[str]:
    """Files that already have a row in the folder's finished shards, after recovering a dead run's partials.

    With ``retry_errors``, error rows are first removed from their shards (each shard rewritten under
    another name and renamed), so their files count as not done.
    """
    _recover_partials(folder)
    if retry_errors:
        _drop_error_rows(folder)
    done: set[str] = set()
    for shard in sorted(folder.glob("part-*.jsonl")):
        done.update(row["file"] for row in _jsonl_rows(shard))
    for shard in sorted(folder.glob("part-*.parquet")):
        import pyarrow.parquet as pq

        done.update(pq.read_table(shard, columns=["file"]).column("file").to_pylist())
    return done


def read_rows(folder: Path) -> list[dict]:
    """Every row of the folder's finished shards (for tests and small jobs; large outputs are better read
    with pandas, pyarrow or DuckDB straight from the shards)."""
    rows = [row for shard in sorted(folder.glob("part-*.jsonl")) for row in _jsonl_rows(shard)]
    for shard in sorted(folder.glob("part-*.parquet")):
        import pyarrow.parquet as pq

        rows += pq.read_table(shard).to_pylist()
    return rows


def _jsonl_rows(shard: Path) -> list[dict]:
    rows = []
    with shard.open(encoding="utf-8") as handle:
        for line in handle:
            row = _parse(line)
            if row is None:
                log.warning("%s: skipping a line that is not a row", shard)
            else:
                rows.append(row)
    return rows


def _parse(line: str) -> dict | None:
    if not line.endswith("\n"):
        return None  # cut short by a dead run
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("file"), str) else None


def _recover_partials(folder: Path) -> None:
    for partial in sorted(folder.glob(f"part-*.jsonl{PARTIAL}")):
        with partial.open(encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle if _parse(line) is not None]
        if lines:
            partial.write_text("".join(lines), encoding="utf-8")
            os.replace(partial, partial.with_name(partial.name[: -len(PARTIAL)]))
            log.info("kept %d rows of an unfinished shard: %s", len(lines), partial.name[: -len(PARTIAL)])
        else:
            partial.unlink()
    for partial in folder.glob(f"part-*.parquet{PARTIAL}"):
        partial.unlink()


def _drop_error_rows(folder: Path) -> None:
    for shard in sorted(folder.glob("part-*.jsonl")):
        with shard.open(encoding="utf-8") as handle:
            lines = handle.readlines()
        kept = [line for line in lines if (_parse(line) or {}).get("error") is None]
        if len(kept) < len(lines):
            temporary = _emptied_or_temporary(shard, bool(kept))
            if temporary is not None:
                temporary.write_text("".join(kept), encoding="utf-8")
                os.replace(temporary, shard)
    for shard in sorted(folder.glob("part-*.parquet")):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(shard)
        kept_table = table.filter(pc.is_null(table.column("error")))
        if kept_table.num_rows < table.num_rows:
            temporary = _emptied_or_temporary(shard, kept_table.num_rows > 0)
            if temporary is not None:
                pq.write_table(kept_table, temporary)
                os.replace(temporary, shard)


def _emptied_or_temporary(shard: Path, rows_left: bool) -> Path | None:
    """Where a shard that loses rows is rewritten before it replaces the shard; None: it was deleted."""
    if not rows_left:
        shard.unlink()
        return None
    return shard.with_name(shard.name + ".rewrite")


class ShardWriter:
    """Writes rows into numbered shards of at most ``shard_rows`` rows; ``close`` finishes the last one."""

    suffix = ""

    def __init__(self, folder: Path, run_id: str, shard_rows: int) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
        self.folder, self.run_id, self.shard_rows = folder, run_id, shard_rows
        self.shards: list[Path] = []
        self._rows_in_shard = 0

    def write(self, row: dict) -> None:
        if self._rows_in_shard == 0:
            self.shards.append(self.folder / f"part-{self.run_id}-{len(self.shards):05d}{self.suffix}")
            self._open(self._partial(self.shards[-1]))
        self._add(row)
        self._rows_in_shard += 1
        if self._rows_in_shard == self.shard_rows:
            self.close()

    def close(self) -> None:
        if self._rows_in_shard:
            self._finish(self._partial(self.shards[-1]))
            os.replace(self._partial(self.shards[-1]), self.shards[-1])
            self._rows_in_shard = 0

    @staticmethod
    def _partial(shard: Path) -> Path:
        return shard.with_name(shard.name + PARTIAL)

    def _open(self, partial: Path) -> None:
        raise NotImplementedError

    def _add(self, row: dict) -> None:
        raise NotImplementedError

    def _finish(self, partial: Path) -> None:
        raise NotImplementedError


class JsonlWriter(ShardWriter):
    """One JSON object per line, flushed row by row, so a dead run loses nothing it was told about."""

    suffix = FORMATS["jsonl"]

    def _open(self, partial: Path) -> None:
        self._handle = partial.open("w", encoding="utf-8")

    def _add(self, row: dict) -> None:
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()

    def _finish(self, partial: Path) -> None:
        self._handle.close()


class ParquetWriter(ShardWriter):
    """The same rows as Parquet: ``probs`` a struct with one field per label, ``segments`` a list of structs."""

    suffix = FORMATS["parquet"]

    def __init__(self, folder: Path, run_id: str, shard_rows: int, labels: Sequence[str]) -> None:
        super().__init__(folder, run_id, shard_rows)
        self.schema = parquet_schema(labels)
        self._rows: list[dict] = []

    def _open(self, partial: Path) -> None:
        self._rows = []

    def _add(self, row: dict) -> None:
        self._rows.append(row)

    def _finish(self, partial: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(self._rows, schema=self.schema), partial)
        self._rows = []


def parquet_schema(labels: Sequence[str]) -> Any:
    import pyarrow as pa

    segment = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("label", pa.string()),
                         ("confidence", pa.float64())])
    return pa.schema([
        ("file", pa.string()), ("duration", pa.float64()), ("label", pa.string()),
        ("probs", pa.struct([(label, pa.float64()) for label in labels])),
        ("segments", pa.list_(segment)), ("error", pa.string()),
    ])


def make_writer(out_format: str, folder: Path, run_id: str, shard_rows: int, labels: Sequence[str]) -> ShardWriter:
    if out_format == "jsonl":
        return JsonlWriter(folder, run_id, shard_rows)
    if out_format == "parquet":
        return ParquetWriter(folder, run_id, shard_rows, labels)
    raise ValueError(f"unknown output format {out_format!r}; choose from {', '.join(FORMATS)}")
