"""Course mIoU of one P3 checkpoint on a labelled folder under every combination of test-time scales, as
JSON: which `tta.scales` to put in a recipe, measured once instead of one validation run per choice.

    .venv/bin/python benchmarks/p3_tta_scales.py --ckpt RUN/checkpoints/last.pt \
        --dir ../shared/data/hw1_data/p3_data/validation --scales 0.75 1.0 1.25 1.5 --out tta_scales.json

Each tile's logits are computed once per scale (inference.segment's Segmenter, as validation and predict
compute them: the checkpoint's infer_scale, precision and layout, with the flips / rotations of --flip /
--rotate90) and every subset of the scales is scored from their mean, as `tta.scales` would average them. `cost` is the model work per tile relative to one view at
scale 1 (a view at scale s costs about s squared).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

import report_json  # benchmarks/report_json.py: machine + JSON output
from dlcv.contracts.segment import load_segmenter
from dlcv.data.images import read_rgb
from dlcv.data.masks import UNKNOWN, pair_folder, read_mask
from dlcv.inference.segment import Segmenter
from dlcv.metrics import confusion_of, course_iou


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--dir", required=True, help="a folder of xxxx_sat.jpg + xxxx_mask.png")
    p.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.0, 1.25])
    p.add_argument("--flip", action="store_true", help="also the mirror image of every view")
    p.add_argument("--rotate90", action="store_true", help="also the 90/180/270-degree rotations")
    p.add_argument("--batch-size", type=int, help="default: the run's train.eval_batch_size")
    p.add_argument("--out")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    segmenter, _ = load_segmenter(args.ckpt, device, batch_size=args.batch_size)
    views = {"flip": args.flip, "rotate90": args.rotate90}
    at_scale = {s: Segmenter(segmenter.model, {**segmenter.meta, "tta": {**views, "scales": [s]}},
                             segmenter.numerics, segmenter.batch_size, device) for s in args.scales}
    pairs = pair_folder(args.dir)
    subsets = [c for r in range(1, len(args.scales) + 1) for c in itertools.combinations(args.scales, r)]
    confusion = {c: 0 for c in subsets}
    tic = time.perf_counter()
    for start in range(0, len(pairs), segmenter.batch_size):
        chunk = pairs[start:start + segmenter.batch_size]
        tiles = torch.from_numpy(np.stack([read_rgb(sat).transpose(2, 0, 1) for _, sat, _ in chunk]))
        truth = np.stack([read_mask(mask, UNKNOWN)[0] for _, _, mask in chunk])
        per_scale = {s: scaled.logits(tiles) for s, scaled in at_scale.items()}
        for subset in subsets:
            mean = sum(per_scale[s] for s in subset) / len(subset)
            confusion[subset] = confusion[subset] + confusion_of(truth, mean.argmax(1).numpy())
    n_views = (2 if args.flip else 1) * (4 if args.rotate90 else 1)
    report = {**report_json.machine(), "ckpt": args.ckpt, "tiles": len(pairs), "views_per_scale": n_views,
              "seconds": round(time.perf_counter() - tic, 1), "subsets": []}
    for subset in subsets:
        ious, miou = course_iou(confusion[subset])
        report["subsets"].append({"scales": list(subset), "miou": round(miou, 5),
                                  "cost": round(n_views * sum(s * s for s in subset), 2),
                                  "ious": [round(i, 4) for i in ious]})
    return report_json.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
