"""Loading the default model: first load (GGUF → safetensors conversion) vs warm (converted cache present).

Every load runs in a fresh Python subprocess (nothing imported or cached in memory beforehand) with one torch
thread. The first load uses a brand-new, empty temporary STEER_CACHE_DIR (deleted afterwards), so it pays the
GGUF parse, dequantisation and save; the warm loads reuse that directory. Two figures per load:
- ``load_lm`` seconds: the call itself (what the product waits for once Python and torch are imported);
- process seconds: the whole subprocess, interpreter start and imports of torch/transformers included.

    python bench/load_speed.py [--warm 3] [--first 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, header, pin_threads  # noqa: E402

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from steer_core.model.lm import load_lm
t1, c1 = time.perf_counter(), time.process_time()
lm = load_lm("default", device="cpu")
t2, c2 = time.perf_counter(), time.process_time()
with torch.no_grad():
    ids = lm.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    logit = float(lm.model(ids).logits[0, -1].max())
print("RESULT " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "fingerprint": lm.fingerprint[:12],
                              "check_logit": round(logit, 4)}))
"""


def load_once(cache: Path) -> dict:
    env = dict(os.environ, STEER_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[7:]) | {"process_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--first", type=int, default=1, help="first loads, each into its own fresh cache dir")
    ap.add_argument("--warm", type=int, default=3, help="warm loads after the first")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pin_threads()
    header("load_speed: default model, first (conversion) vs warm (cached) load, fresh subprocess each")
    from steer_core.model.lm import default_gguf_path

    gguf = default_gguf_path()
    print(f"# GGUF: {gguf.name}, {gguf.stat().st_size / 1e6:.0f} MB")
    base = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
    firsts, warms = [], []
    dirs = []
    try:
        for i in range(args.first):
            d = Path(tempfile.mkdtemp(prefix="bench-load-", dir=base))
            dirs.append(d)
            r = load_once(d)
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            firsts.append(r | {"cache_mb": size / 1e6})
            print(f"  first {i}: load_lm {r['load_s']:6.2f} s (CPU {r['load_cpu_s']:6.2f} s)  process {r['process_s']:6.2f} s  "
                  f"(imports {r['import_s']:.2f} s)  cache written {size / 1e6:.0f} MB  fp {r['fingerprint']}",
                  flush=True)
        for i in range(args.warm):
            r = load_once(dirs[-1])
            warms.append(r)
            print(f"  warm  {i}: load_lm {r['load_s']:6.2f} s (CPU {r['load_cpu_s']:6.2f} s)  process {r['process_s']:6.2f} s  "
                  f"(imports {r['import_s']:.2f} s)  fp {r['fingerprint']}", flush=True)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    same = len({r["fingerprint"] for r in firsts + warms}) == 1 and len({r["check_logit"] for r in firsts + warms}) == 1
    print(f"\n## results (1 torch thread; load average now {os.getloadavg()[0]:.2f}); "
          f"same fingerprint and logits on every load: {same}")
    print(f"{'load':<8} {'n':>2} {'load_lm s (median)':>19} {'load_lm CPU s':>14} {'process s (median)':>19} "
          f"{'imports s':>10}")
    for name, rs in (("first", firsts), ("warm", warms)):
        if rs:
            print(f"{name:<8} {len(rs):>2} {statistics.median(r['load_s'] for r in rs):>19.2f} "
                  f"{statistics.median(r['load_cpu_s'] for r in rs):>14.2f} "
                  f"{statistics.median(r['process_s'] for r in rs):>19.2f} "
                  f"{statistics.median(r['import_s'] for r in rs):>10.2f}")
    if firsts and warms:
        print(f"first / warm (load_lm): {statistics.median(r['load_s'] for r in firsts) / statistics.median(r['load_s'] for r in warms):.1f}x")
    print("issue target: warm load <= 3 s")
    if args.json:
        args.json.write_text(json.dumps({"first": firsts, "warm": warms, "consistent": same}, indent=1))


if __name__ == "__main__":
    main()
