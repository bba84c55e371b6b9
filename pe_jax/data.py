"""Byte-level corpora, deterministic splits, and batches with explicit positions.

A corpus is two uint8 arrays, train and validation. Sources, by ``config.data``:

- ``stdlib`` (default): the Python standard library's own ``.py`` files, read from the
  running interpreter's installation (no site-packages, no test suites). Files are split
  by a CRC-32 of their relative path, so the split is the same on every machine with
  the same Python version and does not depend on directory listing order.
- ``text:PATH``: any local file read as bytes; the last ``val_fraction`` is validation.
- ``tfds:NAME``: a TensorFlow Datasets dataset read through ``tfds.data_source`` (no
  TensorFlow needed), its ``data_text_key`` feature joined with newlines.

Training batches are random windows chosen by a generator seeded with ``(seed, step)``:
any step's batch can be rebuilt without iterator state, so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
import zlib

import numpy as np

SOURCES = ("stdlib", "text:PATH", "tfds:NAME")
_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    train: np.ndarray  # uint8
    val: np.ndarray  # uint8


def stdlib_files(root: str | None = None) -> list[str]:
    """Sorted relative paths of the standard library's source files."""
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in files:
            if name.endswith(".py"):
                paths.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(paths)


def is_validation_file(relative_path: str, val_percent: int = 5) -> bool:
    return zlib.crc32(relative_path.encode()) % 100 < val_percent


def load_stdlib(root: str | None = None) -> Corpus:
    root = root or sysconfig.get_paths()["stdlib"]
    train, val = [], []
    for relative in stdlib_files(root):
        with open(os.path.join(root, relative), "rb") as f:
            data = f.read()
        (val if is_validation_file(relative) else train).append(data)
    if not train or not val:
        raise ValueError(f"no standard-library sources found under {root!r}")
    return Corpus("stdlib", _as_bytes(train), _as_bytes(val))


def load_text(path: str, val_fraction: float = 0.1) -> Corpus:
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    cut = int(len(data) * (1.0 - val_fraction))
    if cut < 2 or len(data) - cut < 2:
        raise ValueError(f"data file {path!r} is too small to split ({len(data)} bytes)")
    return Corpus(f"text:{path}", data[:cut], data[cut:])


def load_tfds(
    name: str,
    text_key: str = "text",
    data_dir: str | None = None,
    max_bytes: int = 64 << 20,
) -> Corpus:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown tfds dataset {name!r} (see tfds.list_builders())") from None
    # Before download_and_prepare (and under tfds mocks) the split list is empty:
    # fall back to the usual names and let data_source say if one is missing.
    splits = list(builder.info.splits.keys()) or ["train", "validation"]
    val_split = next((s for s in ("validation", "test") if s in splits), None)
    if "train" not in splits or val_split is None:
        raise ValueError(
            f"tfds dataset {name!r} needs a 'train' and a 'validation' or 'test' split; "
            f"it has {splits}"
        )
    arrays = []
    for split in ("train", val_split):
        source = tfds.data_source(name, split=split, data_dir=data_dir)
        chunks, total = [], 0
        for index in range(len(source)):
            example = source[index]
            if text_key not in example:
                raise ValueError(
                    f"tfds dataset {name!r} has no feature {text_key!r}; features: "
                    f"{sorted(example)}"
                )
            text = example[text_key]
            chunk = text.encode() if isinstance(text, str) else bytes(text)
            chunks.append(chunk + b"\n")
            total += len(chunk) + 1
            if total >= max_bytes:
                break
        arrays.append(_as_bytes(chunks))
    return Corpus(f"tfds:{name}", arrays[0], arrays[1])


def load(spec: str, *, text_key: str = "text", data_dir: str | None = None) -> Corpus:
    """The corpus named by ``spec`` (see the module docstring)."""
    if spec == "stdlib":
        return load_stdlib()
    if spec.startswith("text:") and len(spec) > 5:
        return load_text(spec[5:])
    if spec.startswith("tfds:") and len(spec) > 5:
        return load_tfds(spec[5:], text_key=text_key, data_dir=data_dir)
    raise ValueError(f"unknown dataset {spec!r}; accepted: {', '.join(SOURCES)}")


def _as_bytes(chunks: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()


def train_batch(
    tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int
) -> dict[str, np.ndarray]:
    """Random windows for ``step``: inputs, targets and their positions ``0..L-1``."""
    if len(tokens) < seq_len + 2:
        raise ValueError(
            f"training split has {len(tokens)} tokens, too few for seq_len {seq_len}"
        )
    rng = np.random.default_rng([seed, step])
    starts_B = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    windows_BxL1 = tokens[starts_B[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    positions_BxL = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    return {
        "inputs": windows_BxL1[:, :-1],
        "targets": windows_BxL1[:, 1:],
        "positions": np.ascontiguousarray(positions_BxL),
    }


def eval_windows(tokens: np.ndarray, length: int, num_tokens: int) -> dict[str, np.ndarray]:
    """The first ``num_tokens`` held-out targets cut into non-overlapping windows.

    Every length that divides ``num_tokens`` scores exactly the same target tokens (other
    lengths score the longest prefix of them made of whole windows, at least one window).
    Each window starts again at position 0: the non-overlapping protocol of the ALiBi
    paper.
    """
    if length <= 0:
        raise ValueError(f"evaluation length must be positive, got {length}")
    count = max(1, num_tokens // length)
    needed = count * length + 1
    if len(tokens) < needed:
        raise ValueError(
            f"validation split has {len(tokens)} tokens; length {length} needs {needed}"
        )
    inputs = tokens[: count * length].reshape(count, length).astype(np.int32)
    targets = tokens[1 : count * length + 1].reshape(count, length).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (count, length))
    return {"inputs": inputs, "targets": targets, "positions": np.ascontiguousarray(positions)}
