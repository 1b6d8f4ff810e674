"""The job backend: what every consumer of a run's state goes through.

Consumers never see the storage: a run talks to a `JobBackend` (a work queue, an input registry
and the run's record), `status`, `export`, `evaluate` and `resume` to a read-only `Catalogue`.
`pipeline.jobs.open_for_run` and `pipeline.jobs.open_catalogue` hand them out; the SQLite store in
`sqlite_store.py` is today's only implementation, a remote backend would be a second.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator

from pipeline.jobs.records import (
    DocumentPages,
    DonePage,
    KnownDocument,
    PageTask,
    StoreSummary,
)


class WorkQueue(abc.ABC):
    """Pages to do. A page is claimed by a device, then completed, failed or released."""

    @abc.abstractmethod
    def count_pending(self) -> int: ...

    @abc.abstractmethod
    def next_pending(self, after: tuple[str, int] | None, limit: int) -> list[PageTask]:
        """Up to `limit` pending pages after the (relpath, page index) `after`, in that order:
        pending work is read in bounded chunks, however large the collection."""

    @abc.abstractmethod
    def pending_pages(
        self, limit: int | None = None, *, doc_id: int | None = None
    ) -> list[PageTask]:
        """Pending pages of one document (re-registration), or the first `limit` of all."""

    @abc.abstractmethod
    def claim(self, page_ids: Iterable[int], device: str) -> None: ...

    @abc.abstractmethod
    def complete(
        self,
        page_id: int,
        *,
        device: str,
        timings: dict,
        confidence: float | None,
        num_tokens: int,
        stop_reason: str,
    ) -> None:
        """Call only after the page's files are complete on disk."""

    @abc.abstractmethod
    def fail(self, page_id: int, error: str, *, max_attempts: int, fatal: bool = False) -> str:
        """Count a failed attempt; the page's new state: 'pending' (retry) or 'failed'."""

    @abc.abstractmethod
    def release(self, page_ids: Iterable[int]) -> None:
        """Give claimed pages back without counting an attempt (stop, lost worker)."""

    @abc.abstractmethod
    def retry_failed(self) -> int:
        """A new run gives every failed page a fresh set of attempts; how many."""


class InputRegistry(abc.ABC):
    """What the run knows about its input files."""

    @abc.abstractmethod
    def known_document(self, relpath: str) -> KnownDocument | None: ...

    @abc.abstractmethod
    def sync_document(
        self,
        *,
        relpath: str,
        path: str | os.PathLike,
        sha256: str,
        size: int,
        mtime_ns: int,
        kind: str,
        format: str,
        page_count: int,
    ) -> int: ...

    @abc.abstractmethod
    def fail_document(
        self,
        *,
        relpath: str,
        path: str | os.PathLike,
        reason: str,
        sha256: str | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None: ...

    @abc.abstractmethod
    def replace_skipped(self, skipped: Iterable[tuple[str, str, str]]) -> None: ...

    @abc.abstractmethod
    def mark_sources_removed(self, present: set[str]) -> list[str]: ...

    @abc.abstractmethod
    def prune_removed(self) -> list[str]: ...


class Catalogue(abc.ABC):
    """The read-only view of a run: what `status`, `export`, `evaluate` and `resume` read."""

    @abc.abstractmethod
    def stored_settings(self) -> dict | None: ...

    @abc.abstractmethod
    def summary(self, *, max_failures: int | None = None) -> StoreSummary: ...

    @abc.abstractmethod
    def done_pages(self) -> Iterator[DonePage]: ...

    @abc.abstractmethod
    def document_pages(self) -> Iterator[DocumentPages]:
        """Every document with its pages, in relpath/page order, from one snapshot, streamed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobBackend(WorkQueue, InputRegistry, Catalogue):
    """Everything a run needs: the queue, the inputs, and the run's own record."""

    @abc.abstractmethod
    def check_fingerprint(
        self, fingerprint: dict, *, new_config: bool, implied: dict | None = None
    ) -> list[str]:
        """Refuse results made under other settings (ConfigMismatch) unless `new_config`.

        Keys an older store lacks are recorded and returned when every key it has matches
        and each added key has the value `implied` gives for versions that lacked it (if any).
        """

    @abc.abstractmethod
    def save_settings(self, settings: dict) -> None: ...
