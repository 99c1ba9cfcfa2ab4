"""The converted-checkpoint format: a folder that is valid only once complete.

    out_dir/
      config.json     the model config (the source HF config + jaxdiff fields)
      jaxdiff.json    manifest, written last: format, groups, every param's shape/dtype, the source
                      file layout (for a faithful export), the dtype policy
      params/<group>  one orbax checkpoint per group: embed, layer_000, layer_001, ..., final
      hf_extra/       the source folder's non-weight files (tokenizer, generation config)

Groups are written one at a time, so conversion holds about one layer in memory. Everything goes
to `<out_dir>.tmp-<pid>` first and is renamed into place only at the very end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping

import numpy as np

from jaxdiff.checkpoint.safetensors_io import CheckpointError

FORMAT = "jaxdiff-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "jaxdiff.json"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def group_of(key: str) -> str:
    m = _LAYER.match(key)
    if m:
        return f"layer_{int(m.group(1)):03d}"
    return "embed" if key.startswith("model.embed_tokens.") else "final"


def _nest(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, arr in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return tree


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


class CheckpointWriter:
    """Streams groups of params into a temporary folder; `commit()` makes it appear at out_dir."""

    def __init__(self, out_dir: str, *, overwrite: bool = False):
        import orbax.checkpoint as ocp

        self.out_dir = os.path.abspath(os.fspath(out_dir))
        if os.path.exists(self.out_dir) and not overwrite:
            raise CheckpointError(f"{self.out_dir}: already exists (pass --overwrite to replace it)")
        self.tmp = f"{self.out_dir}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(os.path.join(self.tmp, "params"))
        # Host arrays are written without a defensive deep copy (nothing mutates them while they
        # are written) and without zstd (weights barely compress; it would cost 4x the time).
        import jax

        registry = ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
            (jax.Array, ocp.type_handlers.ArrayHandler()))
        # Async: the next group is read from the shards while this one is written (at most two
        # groups resident at once).
        self._ckpt = ocp.AsyncCheckpointer(ocp.PyTreeCheckpointHandler(use_compression=False,
                                                                       type_handler_registry=registry))
        self.params: dict[str, dict] = {}
        self.groups: list[str] = []

    def write_group(self, name: str, flat: Mapping[str, np.ndarray]) -> None:
        import orbax.checkpoint as ocp

        tree = _nest({k: np.asarray(v) for k, v in flat.items()})
        self._ckpt.wait_until_finished()
        self._ckpt.save(os.path.join(self.tmp, "params", name), args=ocp.args.PyTreeSave(tree))
        self.groups.append(name)
        for k, a in flat.items():
            self.params[k] = {"shape": list(a.shape), "dtype": np.dtype(a.dtype).name, "group": name}

    def commit(self, config_json: str, manifest: dict, extra_files: Iterable[str] = ()) -> str:
        self._ckpt.wait_until_finished()
        with open(os.path.join(self.tmp, "config.json"), "w") as f:
            f.write(config_json)
        extras = [p for p in extra_files if os.path.isfile(p)]
        if extras:
            os.makedirs(os.path.join(self.tmp, "hf_extra"))
            for p in extras:
                shutil.copy2(p, os.path.join(self.tmp, "hf_extra", os.path.basename(p)))
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "groups": self.groups,
                    "params": self.params, **manifest}
        with open(os.path.join(self.tmp, MANIFEST), "w") as f:  # last file: marks the folder complete
            json.dump(manifest, f, indent=1)
        old = None
        if os.path.exists(self.out_dir):
            old = f"{self.out_dir}.old-{os.getpid()}"
            os.rename(self.out_dir, old)
        os.rename(self.tmp, self.out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return self.out_dir

    def abort(self) -> None:
        try:
            self._ckpt.wait_until_finished()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def read_manifest(path: str) -> dict:
    path = os.fspath(path)
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a jaxdiff checkpoint (no {MANIFEST}); an interrupted conversion "
                              "leaves no manifest") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: malformed manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: unsupported format {manifest.get('format')!r} "
                              f"version {manifest.get('format_version')!r}")
    missing = [g for g in manifest["groups"] if not os.path.isdir(os.path.join(path, "params", g))]
    if missing:
        raise CheckpointError(f"{path}: param group folder(s) missing: {', '.join(missing)}")
    return manifest


def restore_group(path: str, group: str, manifest: dict, shardings: Mapping | None = None) -> dict[str, object]:
    """One group's params, as numpy arrays or (with shardings) directly sharded jax arrays."""
    import jax
    import orbax.checkpoint as ocp

    gpath = os.path.join(os.path.abspath(os.fspath(path)), "params", group)  # orbax wants absolute paths
    keys = [k for k, v in manifest["params"].items() if v["group"] == group]
    try:
        if shardings is None:
            restored = ocp.StandardCheckpointer().restore(gpath)
        else:
            target = _nest({k: jax.ShapeDtypeStruct(tuple(manifest["params"][k]["shape"]),
                                                    np.dtype(manifest["params"][k]["dtype"]),
                                                    sharding=shardings[k]) for k in keys})
            restored = ocp.StandardCheckpointer().restore(gpath, target)
    except Exception as e:  # orbax raises many types for damaged data; name the folder
        raise CheckpointError(f"{gpath}: cannot restore ({type(e).__name__}: {e})") from e
    flat = _flatten(restored)
    if set(flat) != set(keys):
        raise CheckpointError(f"{gpath}: holds {sorted(set(flat) ^ set(keys))[:5]} not matching the manifest")
    return flat
