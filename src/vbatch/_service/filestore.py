"""Where the bytes are: the data folder's ``files/`` (uploads, named by file id) and
``batches/<batch id>/`` (each batch's output and error files while and after it runs). Paths
are made from ids the service generated, never from anything a request says."""

from __future__ import annotations

import contextlib
import os
import shutil

__all__ = ["FileStore"]


class FileStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        for sub in ("files", "batches"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def path(self, location: str) -> str:
        return os.path.join(self.root, location)

    @staticmethod
    def upload_location(file_id: str) -> str:
        return os.path.join("files", file_id)

    @staticmethod
    def output_location(batch_id: str, kind: str) -> str:
        """``kind``: "output" or "errors"."""
        return os.path.join("batches", batch_id, f"{kind}.jsonl")

    def batch_folder(self, batch_id: str) -> str:
        folder = os.path.join(self.root, "batches", batch_id)
        os.makedirs(folder, exist_ok=True)
        return folder

    def remove(self, location: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(location))

    def remove_batch(self, batch_id: str) -> None:
        shutil.rmtree(os.path.join(self.root, "batches", batch_id), ignore_errors=True)
