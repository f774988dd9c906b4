"""Ad hoc (not committed): SmolLM2 engine step kernels, and the graph-count switch on a synthetic graph."""
import sys, time, statistics
import torch
from pathlib import Path
from bench.common import settle_cuda_graphs
import bench.engine_step as es

def synthetic(n_graphs=6, kernels=400):
    x = torch.zeros(1024, device="cuda")
    pool = torch.cuda.graph_pool_handle()
    for i in range(n_graphs):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            for _ in range(kernels):
                x.add_(1)
        g.replay(); torch.cuda.synchronize()
        host, gpu = [], []
        for _ in range(30):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            s.record(); t = time.perf_counter(); g.replay(); host.append(time.perf_counter() - t); e.record(); e.synchronize()
            gpu.append(s.elapsed_time(e))
        print(f"synthetic graph #{i} ({kernels} kernels): GPU {statistics.median(gpu)*1e3:.0f} us, launch host {statistics.median(host)*1e6:.0f} us", flush=True)

if sys.argv[1] == "synthetic":
    synthetic()
else:
    settle_cuda_graphs()
    from torch.profiler import ProfilerActivity, profile
    orig_step = es.LLMEngine.step
    count = {"n": 0}
    prof = profile(activities=[ProfilerActivity.CUDA])
    def step(self):
        count["n"] += 1
        if count["n"] == 40: prof.start()
        r = orig_step(self)
        if count["n"] == 59: torch.cuda.synchronize(); prof.stop()
        return r
    es.LLMEngine.step = step
    r = es.engine_tbt_ms(Path(sys.argv[2]), 1, 64, True)
    print("tbt", r["tbt_ms"])
    rows = sorted(((e.self_device_time_total, e.count, e.key) for e in prof.key_averages() if e.self_device_time_total > 0), reverse=True)
    tot = sum(r[0] for r in rows)
    print(f"GPU {tot/20:.0f} us per step over 20 steps; kernels per step {sum(r[1] for r in rows)/20:.0f}")
    for t, c, k in rows[:22]:
        print(f"  {t/20:7.1f} us/step  {c/20:5.1f}/step  {t/c:5.2f} us  {k[:90]}")
