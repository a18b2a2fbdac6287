"""Datasets given by name where a path would go: a folder written by ``Dataset.save_to_disk``
(or ``DatasetDict.save_to_disk``), and a Hub dataset, ``hf://datasets/NAME``, loaded through
the ``datasets`` cache, so that one fetched once runs offline (``HF_HUB_OFFLINE=1``). Either
becomes a ``DataInput`` read through Arrow, memory-mapped, as ``vbatch.generate`` reads it."""

from __future__ import annotations

import os
from typing import Any

from .._errors import ConfigError, InputError
from .data import DataInput

__all__ = ["HUB_PREFIX", "is_dataset", "open_dataset"]

HUB_PREFIX = "hf://datasets/"
_SAVED = ("dataset_info.json", "dataset_dict.json")  # what save_to_disk leaves in its folder


def is_dataset(path: str) -> bool:
    return path.startswith(HUB_PREFIX) or (
        os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in _SAVED)
    )


def open_dataset(path: str, split: str | None) -> DataInput:
    """The dataset at ``path`` (``is_dataset``), its ``split`` where it has several."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{path} is a dataset: reading it needs the datasets library "
                          "(pip install 'vbatch[data]')") from None  # fmt: skip
    loaded: Any
    try:
        if path.startswith(HUB_PREFIX):
            name, _, revision = path.removeprefix(HUB_PREFIX).partition("@")
            loaded = datasets.load_dataset(name, split=split, revision=revision or None)
        else:
            loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise InputError(path, None, f"cannot load the dataset: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split is None:
            raise InputError(path, None, f"the dataset has splits {splits}: pass --split")
        if split not in loaded:
            raise InputError(path, None, f"no split {split!r} (it has {splits})")
        loaded = loaded[split]
    elif split is not None and not path.startswith(HUB_PREFIX):
        raise InputError(path, None, f"--split {split}: the folder holds one split only")
    return DataInput(loaded, "dataset")
