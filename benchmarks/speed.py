"""Training speed of dlcv against the report's way of training, side by side, printed as JSON.

    .venv/bin/python benchmarks/speed.py --data ../shared/data/hw1_data            # p1, byol, seg
    .venv/bin/python benchmarks/speed.py --data DIR --tasks p1 --steps p1=60 --out bench.json
    .venv/bin/python benchmarks/speed.py --data DIR --tasks p1 --ablate   # + dlcv variants (layout, precision, compile)

Output: JSON lines, on stdout and appended to --out, each the moment it is measured (a run cut off by a time
limit keeps every variant finished before): first the machine, then one line per run of a variant, then one
line per case with the ratio and the fraction of the GPU's bf16 peak. Every dlcv variant reads the decoded
images from dlcv's uint8 cache ($DLCV_CACHE), which the first one fills: the data is decoded once.

Cases: `p1` the report's P1 model A (ResNet-50, 3x3 stem, 32x32, Adam, batch 32); `byol` BYOL ResNet-50 on
128 px views of mini/train; `seg` VGG16-FCN32s on 512 px tiles with flips and 90-degree rotations.

For each case the same resolved dlcv config drives two runs, each in its own process (clean peak memory,
no shared threads or caches): `dlcv` = the real engine (dlcv.engine.Trainer) with its defaults; `baseline`
= benchmarks/baseline.py (per-image PIL dataset, torchvision v1 transforms, DataLoader, fp32). Per run:
the first `warmup` steps (incl. DataLoader start-up, cache hits, any compilation) are reported apart;
over the remaining steps: images/s, data-wait fraction (time from asking for a batch until it is on the
device, over the whole step; CUDA is synchronised at both ends), peak memory (CUDA: max allocated; CPU:
peak RSS of the process and, for the baseline, of its largest DataLoader worker), one-off setup time
(reading files / the decoded cache). The equal-learning check: both start from the same seed and run the
same steps; p1 reports val accuracy on the same seeded val subset, byol/seg the mean training loss of the
last steps. On CUDA, the model's FLOPs per image (torch.utils.flop_counter) give the fraction of the GPU's
dense bf16 peak reached.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

# case -> (task, recipe, data folder, {device type: (batch, timed steps, warm-up steps)}, extra --set)
# CUDA step counts: a variant's process (start, cached data, steps, the hw1 inference timing) takes ~10-15 s on
# an H200, so P1's five variants fit 90 s; the timed steps' spread is in each line's step_ms_spread
CASES = {
    "p1": ("classify", "p1_model_a", "p1_data", {"cpu": (32, 30, 3), "cuda": (256, 50, 10)},
           {"data.limit_val": 500}),
    "byol": ("ssl", "p2_byol", "p2_data", {"cpu": (16, 10, 2), "cuda": (256, 30, 10)},
             {"knn.train_dir": None, "embed_std_images": 64, "sched.name": "constant", "sched.warmup_epochs": 0,
              "optim.lr": 0.05}),
    "seg": ("segment", "p3_model_a", "p3_data", {"cpu": (2, 3, 1), "cuda": (16, 20, 5)},
            {"model.weights": None, "augment.flip": True, "augment.rotate90": True, "data.limit_val": 8}),
}
SEG_TILES = {"cpu": 64, "cuda": 512}  # training tiles decoded for the seg case
TARGETS_CPU = {"p1": 2.0, "byol": 2.0, "seg": 1.5}  # dlcv / baseline images/s goals on a 2-core CPU
INFERENCE = {"p1": ("hw1_1.sh", 5000, {"cpu": 512, "cuda": 2500}), "seg": ("hw1_3.sh", 313, {"cpu": 8, "cuda": 257})}
# dense bf16 tensor-core peak (TFLOP/s) by device-name fragment, most specific first
BF16_PEAK_TFLOPS = [("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362), ("L4", 121),
                    ("A10", 125), ("RTX 4090", 165), ("RTX 3090", 71), ("T4", 65), ("V100", 125)]
# dlcv with one setting changed; a variant equal to what `dlcv` resolved to on this machine is skipped, and
# compile runs last (its warm-up is the longest)
ABLATIONS = {"dlcv_contiguous": {"train.channels_last": False}, "dlcv_channels_last": {"train.channels_last": True},
             "dlcv_fp32": {"train.precision": "fp32"}, "dlcv_bf16": {"train.precision": "bf16"},
             "dlcv_compile": {"train.compile": True}}


def resolve_config(case: str, data: Path, device: str, batch: int, steps: int, extra: dict) -> dict:
    from dlcv import config
    from dlcv.tasks import classify, fill_model_defaults, segment, ssl
    task, recipe, folder, _, sets = CASES[case]
    module = {"classify": classify, "ssl": ssl, "segment": segment}[task]
    values = {"device": device, "train.batch_size": batch,
              "train.eval_batch_size": max(batch, 8), "train.max_steps": steps, "train.epochs": 10_000,
              "snapshot.epochs": [10_000], **sets, **extra}
    if case == "seg":
        values.setdefault("data.limit_train", SEG_TILES[device])
    overrides = [f"{k}={json.dumps(v) if isinstance(v, list) else 'null' if v is None else v}"
                 for k, v in values.items()]
    return fill_model_defaults(module.SCHEMA.resolve(config.with_root(config.load_yaml(recipe), data / folder),
                                                     overrides))


def make_sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class TimedTask:
    """Wraps a dlcv task and times, inside the real engine loop, each step from the request for a batch to
    the end of the optimizer step (and its `after_step`), and the part spent producing the batch."""

    def __init__(self, task, sync):
        self._task, self._sync = task, sync
        self.step_s, self.data_s, self.losses, self.setup_s = [], [], [], 0.0

    def __getattr__(self, name):  # name, monitor, monitor_mode, ... of the wrapped task
        return getattr(self._task, name)

    def setup(self, ctx):
        tic = time.perf_counter()
        self._task.setup(ctx)
        self.setup_s = time.perf_counter() - tic

    def train_batch(self, *args):
        self._sync()
        self._tic = time.perf_counter()
        batch = self._task.train_batch(*args)
        self._sync()
        self.data_s.append(time.perf_counter() - self._tic)
        return batch

    def loss(self, model, batch):
        loss = self._task.loss(model, batch)
        self.losses.append(loss.detach())
        return loss

    def after_step(self, ctx, step):
        self._task.after_step(ctx, step)
        self._sync()
        self.step_s.append(time.perf_counter() - self._tic)


def summarise(step_s, data_s, losses, warmup: int, batch: int) -> dict:
    timed, waited = sum(step_s[warmup:]), sum(data_s[warmup:])
    tail = losses[-5:]
    return {"images_per_s": round(batch * len(step_s[warmup:]) / timed, 3), "data_wait_fraction": round(waited / timed, 4),
            "step_ms": round(1000 * timed / len(step_s[warmup:]), 1),
            "step_ms_spread": [round(1000 * min(step_s[warmup:]), 1), round(1000 * max(step_s[warmup:]), 1)],
            "warmup_s": round(sum(step_s[:warmup]), 2),
            "steps_timed": len(step_s) - warmup, "first_loss": round(losses[0], 4),
            "last_loss_mean": round(sum(tail) / len(tail), 4)}


def peak_memory(device: torch.device, workers: bool = False) -> dict:
    """CUDA: peak allocated. CPU: peak RSS of this process and, with DataLoader workers, of the largest
    worker (forked: its RSS counts pages it shares with the main process)."""
    if device.type == "cuda":
        return {"peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    usage = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if workers:
        usage["peak_worker_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return usage


def flops_per_image(case: str, cfg: dict) -> float:
    """Training FLOPs (forward + backward) per image, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    import baseline
    with torch.device("meta"):
        model = baseline.model_for(case, cfg, 50)
        if case == "byol":
            size = cfg["data"]["input_size"] or cfg["data"]["image_size"]
        else:
            size = 32 if case == "p1" else 512
        x = torch.randn(2, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            out = model(x, x.clone()) if case == "byol" else model(x)
            loss = out if case == "byol" else (out["out"] if case == "seg" else out).sum()
            loss.backward()
    return counter.get_total_flops() / 2


def inference(case: str, cfg: dict, run_dir: Path, device: torch.device, sync) -> dict:
    """The hw1_1.sh / hw1_3.sh code paths (decode files, batched forward, write outputs) on real files."""
    from dlcv.data import layouts
    from dlcv.data.images import list_images
    from dlcv.data.masks import sat_images
    from dlcv.contracts import classify as classify_contracts, segment as segment_contracts
    script, full, counts = INFERENCE[case]
    list_inputs = list_images if case == "p1" else sat_images
    val_dir = layouts.find_split(Path(cfg["data"]["root"]), cfg["data"]["val_dir"], layouts.VAL_NAMES, "validation",
                                 "data.val_dir", required=True)
    files = list_inputs(val_dir)[:counts[device.type]]
    ckpt = run_dir / "checkpoints" / "last.pt"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        tic = time.perf_counter()
        if case == "p1":
            classify_contracts.predict_folder(ckpt, folder, Path(tmp) / "out.csv", device)
        else:
            segment_contracts.predict_folder(ckpt, folder, Path(tmp) / "out", device)
        sync()
        seconds = time.perf_counter() - tic
    return {"command": script, "images": len(files), "images_per_s": round(len(files) / seconds, 2),
            "estimated_s_for": {str(full): round(full / (len(files) / seconds), 1)}}


def worker(spec: dict) -> dict:
    """One measured run (in its own process)."""
    from dlcv.engine.distributed import pick_device
    case, impl = spec["case"], spec["impl"]
    device = pick_device(spec["device"])
    sync = make_sync(device)
    cfg = resolve_config(case, Path(spec["data"]), device.type, spec["batch"], spec["warmup"] + spec["steps"],
                         spec["sets"])
    if impl == "baseline":
        import baseline
        tic = time.perf_counter()
        model, timing = baseline.train(case, cfg, device, spec["workers"], sync)
        result = summarise(timing["step_s"], timing["data_s"], timing["losses"], spec["warmup"], spec["batch"])
        result.update(peak_memory(device, spec["workers"] > 0), dataloader_workers=spec["workers"], precision="fp32",
                      channels_last=False, total_s=round(time.perf_counter() - tic, 1))
        if case == "p1":
            result["val_acc"] = round(baseline.p1_val_accuracy(model, cfg, device), 4)
        return result
    from dlcv.engine.trainer import Trainer
    from dlcv.tasks import classify, segment, ssl
    task_cls = {"p1": classify.ClassifyTask, "byol": ssl.SSLTask, "seg": segment.SegmentTask}[case]
    timed = TimedTask(task_cls(cfg), sync)
    run_dir = Path(spec["run_dir"])
    tic = time.perf_counter()
    summary = Trainer(timed, cfg, run_dir).fit()
    result = summarise(timed.step_s, timed.data_s, [x.item() for x in timed.losses], spec["warmup"], spec["batch"])
    result.update(peak_memory(device), setup_s=round(timed.setup_s, 2), precision=summary.environment["precision"],
                  channels_last=summary.environment["channels_last"], compile=cfg["train"]["compile"],
                  total_s=round(time.perf_counter() - tic, 1))
    if case == "p1":
        result["val_acc"] = round(summary.final["val_acc"], 4)
    if spec["inference"] and case in INFERENCE:
        result["inference"] = inference(case, cfg, run_dir, device, sync)
    return result


def spawn(spec: dict, script: str = __file__) -> dict:
    """`script --worker SPEC` in a process of its own; its RESULT line, parsed."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # progress goes to our stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit code {proc.returncode}", "output_tail": proc.stdout[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def median_run(runs: list[dict]) -> dict:
    """The run with the median images/s (lower median), with every run's images/s listed beside it."""
    done = sorted((r for r in runs if "images_per_s" in r), key=lambda r: r["images_per_s"])
    if not done:
        return runs[0]
    chosen = dict(done[(len(done) - 1) // 2])
    inference = next((r["inference"] for r in runs if "inference" in r), None)  # measured in the first run
    if inference:
        chosen["inference"] = inference
    if len(runs) > 1:
        chosen["images_per_s_runs"] = [r.get("images_per_s") for r in runs]
    return chosen


def bf16_peak(device_name: str) -> float | None:
    return next((tf for key, tf in BF16_PEAK_TFLOPS if key in device_name), None)


def parse_pairs(items: list[str], cast) -> dict:
    return {k: cast(v) for k, v in (item.split("=", 1) for item in items)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(BENCH_DIR.parent.parent / "shared" / "data" / "hw1_data"),
                   help="the hw1_data folder (default ../shared/data/hw1_data)")
    p.add_argument("--tasks", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch", nargs="*", default=[], metavar="CASE=N", help="batch size per case")
    p.add_argument("--steps", nargs="*", default=[], metavar="CASE=N", help="timed steps per case")
    p.add_argument("--warmup", nargs="*", default=[], metavar="CASE=N", help="warm-up steps per case")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="baseline DataLoader workers")
    p.add_argument("--ablate", action="store_true",
                   help="also run dlcv with its memory layout or precision switched, and compiled")
    p.add_argument("--variants", nargs="+", default=["baseline", "dlcv"], choices=["baseline", "dlcv"],
                   help="which of the two to run (the GPU kit's CPU rehearsal runs dlcv alone)")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved; the median is reported")
    p.add_argument("--no-inference", dest="inference", action="store_false",
                   help="skip the hw1_1.sh / hw1_3.sh inference timings")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    from dlcv.engine.distributed import pick_device
    from dlcv.engine.run import environment
    data = Path(args.data).resolve()
    if not data.is_dir():
        p.error(f"--data {data} not found (the course's hw1_data folder)")
    device = pick_device(args.device)
    batch, steps, warm = (parse_pairs(x, int) for x in (args.batch, args.steps, args.warmup))
    out = Path(args.out) if args.out else None
    environment_line = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "data": str(data),
                        "environment": environment(device, 1)}
    if device.type == "cuda":
        environment_line["environment"]["bf16_peak_tflops"] = bf16_peak(torch.cuda.get_device_name())
    emit(environment_line, out)
    with tempfile.TemporaryDirectory() as runs:
        for case in args.tasks:
            b, s, w = CASES[case][3][device.type]
            b, s, w = batch.get(case, b), steps.get(case, s), warm.get(case, w)
            variants = {**{v: {} for v in ("baseline", "dlcv") if v in args.variants},
                        **(ABLATIONS if args.ablate else {})}
            results: dict[str, list[dict]] = {}
            for r in range(args.repeat):  # interleaved, so a slower spell of a shared machine hits every variant
                for impl, sets in variants.items():
                    if impl in ABLATIONS and not worth_running(sets, results.get("dlcv", [{}])[0], device):
                        continue
                    print(f"[speed] {case} {impl} (run {r + 1}/{args.repeat}): batch {b}, {w} warm-up + {s} timed "
                          "steps", file=sys.stderr, flush=True)
                    result = spawn({
                        "case": case, "impl": "baseline" if impl == "baseline" else "dlcv", "data": str(data),
                        "device": device.type, "batch": b, "steps": s, "warmup": w, "sets": sets,
                        "workers": args.workers, "run_dir": f"{runs}/{case}_{impl}_{r}",
                        "inference": args.inference and impl == "dlcv" and r == 0})
                    results.setdefault(impl, []).append(result)
                    emit({"case": case, "variant": impl, "run": r + 1, "batch": b, "steps": s, "warmup": w, **result}, out)
            emit({"case": case, "summary": case_summary(case, data, device, b, s, w, results, environment_line)}, out)
    return 0


def emit(line: dict, out: Path | None) -> None:
    """One JSON line on stdout and appended to `out`, at once."""
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(text + "\n")


def worth_running(sets: dict, dlcv_result: dict, device: torch.device) -> bool:
    """An ablation that changes what `dlcv` resolved to on this machine (emulated bf16 on a CPU is skipped:
    ~15x slower, measured in engine/trainer.py)."""
    key, value = next(iter(sets.items()))
    if key == "train.compile":
        return True
    if key == "train.precision" and value == "bf16" and device.type == "cpu" \
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    resolved = {"train.channels_last": dlcv_result.get("channels_last"), "train.precision": dlcv_result.get("precision")}
    return resolved[key] != value


def case_summary(case: str, data: Path, device: torch.device, b: int, s: int, w: int, results: dict,
                 environment_line: dict) -> dict:
    """Median run per variant, dlcv / baseline, training GFLOPs per image and the fraction of the bf16 peak."""
    chosen = {impl: median_run(runs) for impl, runs in results.items()}
    entry = {"batch": b, "steps": s, "warmup": w,
             "images_per_s": {impl: r.get("images_per_s") for impl, r in chosen.items()}}
    base, fast = chosen.get("baseline", {}), chosen.get("dlcv", {})
    if "images_per_s" in base and "images_per_s" in fast:
        entry["ratio_dlcv_over_baseline"] = round(fast["images_per_s"] / base["images_per_s"], 3)
        if device.type == "cpu":
            entry["target_ratio_cpu"] = TARGETS_CPU[case]
    cfg = resolve_config(case, data, device.type, b, s + w, {})
    entry["train_gflops_per_image"] = round(flops_per_image(case, cfg) / 1e9, 3)
    peak = environment_line["environment"].get("bf16_peak_tflops")
    if peak:
        entry["fraction_of_bf16_peak"] = {impl: round(entry["train_gflops_per_image"] * r["images_per_s"] / (peak * 1e3), 4)
                                          for impl, r in chosen.items() if "images_per_s" in r}
    return entry


if __name__ == "__main__":
    sys.exit(main())
