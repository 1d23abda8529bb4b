"""Saving and restoring a training run, bit for bit: one ``.npz`` file per run.

The file format (documented so that other tools can read it; numpy is all it needs):

* ``leaf_00000``, ``leaf_00001``, ...: the leaves of the run's state pytree (theta,
  optimizer state, estimator and worker state, keys, counters) in ``jax.tree_util``
  order, as numpy arrays. PRNG key arrays are stored as their ``jax.random.key_data``
  (uint32) and rebuilt with ``jax.random.wrap_key_data``.
* ``array/<name>``: named numpy arrays of any length (the history so far).
* ``manifest``: a JSON string with

  - ``format``: ``"unroll-checkpoint/1"``;
  - ``fingerprint``: what identifies the run that wrote it (the settings that must not
    change across a resume, e.g. the estimator, the number of steps and seeds, a hash
    of the initial theta and key);
  - ``treedef``: the state's tree structure (``str`` of its ``PyTreeDef``);
  - ``leaves`` and ``arrays``: per entry ``shape``, ``dtype``, ``key_impl`` (``null``
    for plain arrays) and ``sha256`` of its bytes;
  - ``meta``: free-form facts (the outer step reached, whether the run is complete).

A file is written to ``PATH.tmp`` and moved over ``PATH`` with ``os.replace``, so a
run killed while saving leaves the previous checkpoint intact. ``load`` refuses, with a
``CheckpointError`` that says what is wrong and what to do, a file that is not such a
checkpoint, one whose checksums fail (corrupt), and one written by a different run
(fingerprint or state structure differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import jax
import numpy as np

from unroll._errors import BadValue
from unroll._tree import PyTree

__all__ = ["FORMAT", "CheckpointError", "fingerprint_hash", "load", "save"]


FORMAT = "unroll-checkpoint/1"


class CheckpointError(BadValue):
    """A checkpoint that cannot be used: unreadable, corrupt, or from another run."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _dtype_of(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _entry(array: np.ndarray, key_impl: str | None) -> dict:
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "key_impl": key_impl,
        "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
    }


def fingerprint_hash(tree: PyTree) -> str:
    """A short identity for initial values (theta, key) in a fingerprint: a sha256 of a pytree's leaves.

    Args:
      tree: a pytree of arrays and PRNG keys; the bytes, shapes and dtypes of its leaves are hashed (keys by
        their data), in `jax.tree_util` order.

    Returns:
      The first 16 hex digits of the sha256.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def save(path: str, state: PyTree, arrays: dict[str, np.ndarray], fingerprint: dict, meta: dict) -> None:
    """Writes `state`, named `arrays` and the manifest to `path` atomically (the module's format).

    The file is written to `path + ".tmp"` and moved over `path` with `os.replace`.

    Args:
      path: the checkpoint's file path (`.npz`); its folder is created if missing.
      state: a pytree of arrays and keys, stored as `leaf_00000`, `leaf_00001`, ...
      arrays: named numpy arrays of any length, stored as `array/<name>`.
      fingerprint: what identifies the run (JSON-able), checked by `load`.
      meta: free-form JSON-able facts (the outer step reached, whether the run is complete).

    Returns:
      None.
    """
    leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(state))
    files, manifest_leaves, manifest_arrays = {}, [], {}
    for i, leaf in enumerate(leaves):
        key_impl = str(jax.random.key_impl(leaf)) if _is_key(leaf) else None
        array = np.asarray(jax.random.key_data(leaf) if key_impl else leaf)
        files[f"leaf_{i:05d}"] = array
        manifest_leaves.append(_entry(array, key_impl))
    for name, value in arrays.items():
        array = np.asarray(value)
        files[f"array/{name}"] = array
        manifest_arrays[name] = _entry(array, None)
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "treedef": str(treedef),
        "leaves": manifest_leaves,
        "arrays": manifest_arrays,
        "meta": meta,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, manifest=np.asarray(json.dumps(manifest, sort_keys=True)), **files)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(
            f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err}); it is corrupt or not an unroll "
            "checkpoint: delete it to start the run afresh."
        ) from None
    try:
        manifest = json.loads(str(contents.pop("manifest")))
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(
            f"checkpoint {path!r} has no readable manifest; it is not an unroll checkpoint: delete it or pass "
            "another path."
        ) from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path!r} has format {manifest.get('format')!r}, expected {FORMAT!r}: delete it to start "
            "afresh."
        )
    return manifest, contents


def _verified(path: str, name: str, array: np.ndarray, entry: dict) -> np.ndarray:
    if (
        list(array.shape) != entry["shape"]
        or array.dtype.str != entry["dtype"]
        or hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != entry["sha256"]
    ):
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt: {name} does not match its checksum; delete it to start the run afresh."
        )
    return array


def load(path: str, like: PyTree, fingerprint: dict) -> tuple[PyTree, dict[str, np.ndarray], dict]:
    """Reads a checkpoint written by `save` for the run described by `fingerprint`.

    Args:
      path: the checkpoint's file path.
      like: a pytree with the structure, shapes and dtypes of the saved state.
      fingerprint: what identifies this run; it must equal the saved one.

    Returns:
      `(state, arrays, meta)`; the state's leaves are numpy arrays (keys rebuilt as key arrays).

    Raises:
      CheckpointError: the file is unreadable or corrupt, or comes from a different run.
    """
    manifest, contents = _read(path)
    saved = manifest.get("fingerprint", {})
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, this run {fingerprint.get(k)!r}" for k in differ)
        raise CheckpointError(
            f"checkpoint {path!r} was written by a different run ({details}); resume with the settings that "
            "wrote it, or use another checkpoint path (or delete it) to start afresh."
        )
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if manifest["treedef"] != str(treedef) or len(manifest["leaves"]) != len(leaves):
        raise CheckpointError(
            f"checkpoint {path!r} holds a state of another structure than this run's (estimator, optimizer or "
            "theta changed); use another checkpoint path or delete it to start afresh."
        )
    restored = []
    for i, (entry, leaf) in enumerate(zip(manifest["leaves"], leaves)):
        name = f"leaf_{i:05d}"
        if name not in contents:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: {name} is missing; delete it to start afresh.")
        array = _verified(path, name, contents[name], entry)
        if entry["key_impl"]:
            value = jax.random.wrap_key_data(array, impl=entry["key_impl"])
        else:
            value = array
        want_shape = np.shape(leaf)
        want_dtype = np.dtype(jax.random.key_data(leaf).dtype if _is_key(leaf) else _dtype_of(leaf))
        got_dtype = array.dtype
        if (
            tuple(np.shape(value)) != tuple(want_shape)
            or got_dtype != want_dtype
            or bool(entry["key_impl"]) != _is_key(leaf)
        ):
            raise CheckpointError(
                f"checkpoint {path!r}: state leaf {i} has shape {tuple(np.shape(value))} and dtype {got_dtype}, this "
                f"run's has {tuple(want_shape)} and {want_dtype}; use another checkpoint path or delete it."
            )
        restored.append(value)
    arrays = {}
    for name, entry in manifest["arrays"].items():
        key = f"array/{name}"
        if key not in contents:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: {key} is missing; delete it to start afresh.")
        arrays[name] = _verified(path, key, contents[key], entry)
    return jax.tree_util.tree_unflatten(treedef, restored), arrays, manifest.get("meta", {})
