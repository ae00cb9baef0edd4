"""Weight interpolation between two embedded families of the same shapes (WiSE-FT style: Wortsman et al. 2022):
every tensor of every sub-model becomes (1 - lam) * A + lam * B, in float32, stored in B's dtype; everything else
(configs, tokenizers, records, the VocabTrim ranking) is B's. Both families must start from the same weights
(e.g. the shipped family and an unlikelihood fine-tune of it with its students refined), else the mix means nothing.

Why: a dial between two families, e.g. repetition against speed (README, "Unlikelihood on a lent H100").

    python scripts/interpolate_family.py assets/models FINE_TUNED_FAMILY MIX --lam 0.3
    SPECVIZ_EMBEDDED_DIR=MIX python -m specviz.bench ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def tensors_of(directory: Path) -> dict:
    """Every tensor of one sub-model's folder, by name, whatever its sharding."""
    merged: dict = {}
    for path in sorted(directory.glob("*.safetensors")):
        merged.update(load_file(path))
    return merged


def interpolate(a: Path, b: Path, out: Path, lam: float, force: bool = False) -> int:
    """Write the mixed family to out; returns the number of tensors mixed. Sub-models are matched by folder
    and tensors by name, so the two families may be sharded differently."""
    if out.resolve() in (a.resolve(), b.resolve()):
        raise SystemExit("out must be a new folder, not one of the two families")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"{out} is not empty (--force replaces it)")
        shutil.rmtree(out)
    shutil.copytree(b, out, symlinks=True, ignore=shutil.ignore_patterns("ckpt.pt"), dirs_exist_ok=True)
    mixed = 0
    for folder in sorted({path.parent for path in b.rglob("*.safetensors")}):
        rel = folder.relative_to(b)
        first, second = tensors_of(a / rel), tensors_of(folder)
        if first.keys() != second.keys() or any(first[k].shape != second[k].shape for k in second):
            raise SystemExit(f"{rel}: the two families differ in tensors or shapes")
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as handle:
                metadata, names = handle.metadata(), list(handle.keys())
            tensors = {k: ((1 - lam) * first[k].float() + lam * second[k].float()).to(second[k].dtype) for k in names}
            save_file(tensors, str(out / rel / path.name), metadata=metadata)
            mixed += len(tensors)
    return mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="family at lam = 0 (e.g. assets/models)")
    parser.add_argument("b", type=Path, help="family at lam = 1")
    parser.add_argument("out", type=Path)
    parser.add_argument("--lam", type=float, required=True)
    parser.add_argument("--force", action="store_true", help="replace a non-empty out")
    args = parser.parse_args()
    print(
        f"{interpolate(args.a, args.b, args.out, args.lam, args.force)} tensors mixed at lam {args.lam} -> {args.out}"
    )


if __name__ == "__main__":
    main()
