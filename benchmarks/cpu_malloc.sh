#!/usr/bin/env bash
# Usage: bash benchmarks/cpu_malloc.sh   (prints img/s and page faults per step, two interleaved rounds)
# glibc malloc A/B: lite2_deeplab (p3_cpu's model) training steps at 256 px, batch 16, fp32, channels_last
cd "$(dirname "$0")/.."
PROBE='
import time, torch, torch.nn.functional as F, resource
from dlcv.models import create_model
torch.manual_seed(0)
m = create_model("lite2_deeplab", num_classes=7, weights=None, skips=[16, 8, 4]).to(memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randn(16, 3, 256, 256).contiguous(memory_format=torch.channels_last); y = torch.randint(0, 7, (16, 256, 256))
for i in range(9):
    if i == 2: tic = time.perf_counter(); f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loss = F.cross_entropy(m(x)["out"], y); loss.backward(); opt.step(); opt.zero_grad()
dt = time.perf_counter() - tic
print("img/s %.2f  minor faults/step %d" % (16 * 7 / dt, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 7))
'
for r in 1 2; do
  echo -n "default glibc:            "; .venv/bin/python -c "$PROBE"
  echo -n "MALLOC_MMAP_MAX_=0 etc.:  "; MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 .venv/bin/python -c "$PROBE"
done
