#!/usr/bin/env python3
"""PyTorch reference timings for the rows of a moe_bench JSON, merged with the engine's.

For every row of the engine's JSON (shape, E, K, D, I, shared experts, T, routing) this times
the same MoE block written the way torchtitan's dropless MoE runs it, in the row's dtype on
--device:

  router   logits = x Wg^T (fp32: x up-cast, or the run dtype, as the row's router_gemm says);
           scores = softmax | sigmoid (fp32); selection scores (+ expert bias) with optional
           group-limited top-k (DeepSeek-V3: group score = sum of the group's two best); top-k;
           weights = scores at the ids, renormalised if configured, * route_scale.
           Balanced routing: ids[t, k] = (t*K + k) mod E, exactly as the engine's force_balanced.
  count    torch.histc of the flat ids (E bins; no host synchronisation)
  dispatch perm = torch.argsort(flat ids, stable=True); routed = x[perm // K];
           offs = cumsum(counts) as int32
  experts  torch._grouped_mm(routed, w13 [E, D, 2I], offs) -> SiLU(gate) * up ->
           torch._grouped_mm(h, w2 [E, I, D], offs); the weights are stored [E, N, K] (K-major,
           as nn.Linear and torchtitan store them) and passed transposed
  combine  y * route weight (fp32), index_add_ into an fp32 [T, D], rounded once
  shared   dense SwiGLU on every token (DeepSeek-V3), added

The weights are random (uniform +-1/sqrt(fan_in), as the engine's tools draw them, but not the
same bits), allocated once per shape and freed before the next. Each row: warm-up calls, then
the median of timed calls (torch.cuda.Event on cuda, perf_counter on cpu) under
torch.inference_mode(). A check per shape compares the grouped path with a per-expert loop of
torch.mm on the same routing.

Prints one merged table and writes the engine JSON plus per row "torch_ms", "speedup" (= torch
ms / engine ms), the torch floor and ratio, and the torch / GPU versions under "torch".

  moe_bench --backend cuda --json $OUT/moe_bench_h100.json
  python3 tools/moe_bench_torch.py --engine_json $OUT/moe_bench_h100.json

Needs only python3 and torch (no network, no numpy). Without torch._grouped_mm on the device
(old torch, or a GPU it does not support) it stops, unless --allow_loop_fallback is given: then
the experts run as a per-expert loop of torch.mm and the output says so.
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time a PyTorch reference of every row of a moe_bench JSON and merge.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--engine_json", required=True, help="moe_bench's --json output")
    p.add_argument(
        "--out",
        default="",
        help="merged JSON; default: the engine JSON's name with a _vs_torch suffix, beside it",
    )
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument(
        "--warmup", type=int, default=-1, help="untimed calls per row; -1 = the engine's warm-up"
    )
    p.add_argument(
        "--reps", type=int, default=0, help="timed calls per row (median); 0 = the engine's reps"
    )
    p.add_argument(
        "--max_row_seconds",
        type=float,
        default=-1.0,
        help="stop a row's timed calls after this long (at least 3); -1 = the engine's",
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed for weights and inputs")
    p.add_argument(
        "--allow_loop_fallback",
        action="store_true",
        help="if torch._grouped_mm is unavailable, loop over the experts with torch.mm",
    )
    p.add_argument(
        "--force_loop",
        action="store_true",
        help="time the per-expert torch.mm loop even where torch._grouped_mm works",
    )
    p.add_argument(
        "--no_check",
        action="store_true",
        help="skip the per-shape check of the grouped path against the torch.mm loop",
    )
    p.add_argument(
        "--shapes", default="", help="comma-separated shape names to run (default: all rows)"
    )
    return p.parse_args(argv)


def fail(msg):
    print("moe_bench_torch: " + msg, file=sys.stderr)
    sys.exit(1)


def default_out(engine_json):
    base, ext = os.path.splitext(engine_json)
    return base + "_vs_torch" + (ext or ".json")


# One block's config, from a row; rows with equal keys share the weights.
CONFIG_FIELDS = (
    "shape", "E", "K", "D", "I", "shared", "dtype", "score", "use_expert_bias", "num_groups",
    "topk_groups", "renormalize", "route_scale", "score_before_experts", "num_shared_experts",
    "shared_inter", "shared_gate", "capacity_factor", "router_gemm", "route_weights",
)
# Defaults for rows of a JSON written before moe_bench recorded the routing config.
LEGACY_DEFAULTS = {
    "score": None, "use_expert_bias": False, "num_groups": 1, "topk_groups": 1,
    "renormalize": True, "route_scale": 1.0, "score_before_experts": False,
    "num_shared_experts": None, "shared_inter": None, "shared_gate": False,
    "capacity_factor": 0.0, "router_gemm": "fp32", "route_weights": "fp32",
}


def row_config(row):
    cfg = {}
    for f in CONFIG_FIELDS:
        if f in row:
            cfg[f] = row[f]
        elif f in LEGACY_DEFAULTS:
            cfg[f] = LEGACY_DEFAULTS[f]
        else:
            fail("row %r has no field %r" % (row.get("shape"), f))
    if cfg["score"] is None:
        fail(
            "row %r has no routing config (score, ...): re-run moe_bench, which now writes it"
            % row.get("shape")
        )
    if cfg["num_shared_experts"] is None:
        cfg["num_shared_experts"] = 1 if cfg["shared"] else 0
        cfg["shared_inter"] = cfg["shared"]
    if cfg["capacity_factor"]:
        fail("row %r: capacity_factor > 0 (dropping) is not in the reference" % cfg["shape"])
    if cfg["dtype"] not in ("bf16", "f32"):
        fail("row %r: dtype %r is not bf16 or f32" % (cfg["shape"], cfg["dtype"]))
    return cfg


def config_key(cfg):
    return tuple(cfg[f] for f in CONFIG_FIELDS)


def weight_bytes(cfg, experts_hit):
    """As moe_bench: gate + every expert that got a row + shared experts (+ shared gate)."""
    elt = 2 if cfg["dtype"] == "bf16" else 4
    e, d, i, s = cfg["E"], cfg["D"], cfg["I"], cfg["shared"]
    b = e * d * elt + experts_hit * 3 * d * i * elt + 3 * d * s * elt
    if cfg["shared_gate"] and s > 0:
        b += d * elt
    return float(b)


def flops(cfg, tokens, routed_rows):
    e, d, i, s = cfg["E"], cfg["D"], cfg["I"], cfg["shared"]
    return 2.0 * tokens * e * d + 6.0 * routed_rows * d * i + 6.0 * tokens * d * s


def floor_seconds(cfg, tokens, experts_hit, ceilings):
    """max(bytes / bandwidth, flops / GEMM peak) from the engine run's ceilings; 0 if none."""
    bw = (ceilings or {}).get("floor_bandwidth_gbps") or 0.0
    gemm = (ceilings or {}).get("gemm_bf16") or {}
    peak = gemm.get("gflops") or 0.0
    f = 0.0
    if bw > 0:
        f = weight_bytes(cfg, experts_hit) / (bw * 1e9)
    if peak > 0:
        f = max(f, flops(cfg, tokens, tokens * cfg["K"]) / (peak * 1e9))
    return f


class Block:
    """One MoE block's weights on the device and its forward passes."""

    def __init__(self, torch, cfg, device, max_tokens, gen_seed, use_grouped_mm):
        self.torch = torch
        self.F = torch.nn.functional
        self.cfg = cfg
        self.device = device
        self.use_grouped_mm = use_grouped_mm
        t = torch
        dt = t.bfloat16 if cfg["dtype"] == "bf16" else t.float32
        self.dtype = dt
        e, k, d, i, s = cfg["E"], cfg["K"], cfg["D"], cfg["I"], cfg["shared"]
        self.E, self.K, self.D, self.I, self.S = e, k, d, i, s
        t.manual_seed(gen_seed)

        def uniform(shape, bound, dtype=dt):
            return t.empty(shape, dtype=dtype, device=device).uniform_(-bound, bound)

        in_b = 1.0 / math.sqrt(d)
        self.gate = uniform((e, d), in_b)  # run dtype values
        self.gate_f32 = self.gate.float() if cfg["router_gemm"] == "fp32" else None
        # The bias only changes the selection; held as run-dtype values, used in fp32.
        self.bias = uniform((e,), 0.05).float() if cfg["use_expert_bias"] else None
        # nn.Linear layout [out, in]: w13 = [w1; w3] per expert, [E, 2I, D]; w2 [E, D, I].
        self.w13 = uniform((e, 2 * i, d), in_b)
        self.w2 = uniform((e, d, i), 1.0 / math.sqrt(i))
        # The [E, K, N] operands of torch._grouped_mm, as views (K-major, as torchtitan passes
        # w.transpose(-2, -1)).
        self.w13_t = self.w13.transpose(-2, -1)
        self.w2_t = self.w2.transpose(-2, -1)
        if s > 0:
            self.sw13 = uniform((2 * s, d), in_b)
            self.sw2 = uniform((d, s), 1.0 / math.sqrt(s))
            self.sgate = uniform((1, d), in_b) if cfg["shared_gate"] else None
        self.x = uniform((max_tokens, d), 1.0)
        n = max_tokens * k
        self.balanced_ids = (t.arange(n, device=device, dtype=t.int64) % e).view(max_tokens, k)

    def weight_gb(self):
        total = 0
        for name in ("gate", "w13", "w2", "sw13", "sw2"):
            v = getattr(self, name, None)
            if v is not None:
                total += v.numel() * v.element_size()
        return total / 1e9

    def route(self, x, balanced):
        t, cfg = self.torch, self.cfg
        T = x.shape[0]
        if self.gate_f32 is not None:
            logits = x.float() @ self.gate_f32.t()
        else:
            logits = (x @ self.gate.t()).float()
        scores = logits.softmax(-1) if cfg["score"] == "softmax" else logits.sigmoid()
        if balanced:
            ids = self.balanced_ids[:T]
        else:
            choice = scores if self.bias is None else scores + self.bias
            g = cfg["num_groups"]
            if g > 1:
                grouped = choice.view(T, g, self.E // g)
                group_scores = grouped.topk(2, dim=-1).values.sum(-1)
                keep = group_scores.topk(cfg["topk_groups"], dim=-1).indices
                mask = t.zeros(T, g, dtype=t.bool, device=x.device).scatter_(1, keep, True)
                choice = grouped.masked_fill(~mask.unsqueeze(-1), float("-inf")).view(T, self.E)
            ids = choice.topk(self.K, dim=-1).indices
        w = scores.gather(1, ids)
        if cfg["renormalize"]:
            w = w / w.sum(-1, keepdim=True)
        if cfg["route_scale"] != 1.0:
            w = w * cfg["route_scale"]
        if cfg["route_weights"] == "run_dtype":
            w = w.to(self.dtype)
        return ids, w

    def dispatch(self, ids):
        t = self.torch
        flat = ids.reshape(-1)
        counts = t.histc(flat.float(), bins=self.E, min=0, max=self.E)
        offs = t.cumsum(counts.to(t.int32), 0, dtype=t.int32)
        perm = t.argsort(flat, stable=True)
        return counts, offs, perm

    def experts(self, routed, offs):
        t, F, i = self.torch, self.F, self.I
        if self.use_grouped_mm:
            h13 = t._grouped_mm(routed, self.w13_t, offs=offs)
            h = F.silu(h13[:, :i]) * h13[:, i:]
            return t._grouped_mm(h, self.w2_t, offs=offs)
        return self.experts_loop(routed, offs)

    def experts_loop(self, routed, offs):
        """Per-expert torch.mm over the segments (offsets read back to the host)."""
        t, F, i = self.torch, self.F, self.I
        y = t.empty(routed.shape[0], self.D, dtype=routed.dtype, device=routed.device)
        ends = offs.tolist()
        start = 0
        for e, end in enumerate(ends):
            if end > start:
                h13 = routed[start:end] @ self.w13[e].t()
                h = F.silu(h13[:, :i]) * h13[:, i:]
                y[start:end] = h @ self.w2[e].t()
            start = end
        return y

    def forward(self, x, balanced, loop=False):
        t, F, cfg = self.torch, self.F, self.cfg
        ids, w = self.route(x, balanced)
        counts, offs, perm = self.dispatch(ids)
        tok = perm // self.K
        routed = x.index_select(0, tok)
        w_sorted = w.reshape(-1).index_select(0, perm).unsqueeze(1)
        if cfg["score_before_experts"]:
            routed = (routed.float() * w_sorted.float()).to(self.dtype)
        y = self.experts_loop(routed, offs) if loop else self.experts(routed, offs)
        if not cfg["score_before_experts"]:
            if cfg["route_weights"] == "run_dtype":
                y = y * w_sorted
            else:
                y = y.float() * w_sorted
        out = t.zeros(x.shape[0], self.D, dtype=t.float32, device=x.device)
        out.index_add_(0, tok, y.float() if y.dtype != t.float32 else y)
        out = out.to(self.dtype)
        if self.S > 0:
            s13 = x @ self.sw13.t()
            ys = (F.silu(s13[:, : self.S]) * s13[:, self.S :]) @ self.sw2.t()
            if self.sgate is not None:
                if cfg["router_gemm"] == "fp32":
                    ys = (ys.float() * (x.float() @ self.sgate.float().t()).sigmoid()).to(self.dtype)
                else:
                    ys = ys * (x @ self.sgate.t()).sigmoid()
            out = out + ys
        return out, counts


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(torch, device, fn, warmup, reps, max_seconds):
    """Median and min seconds (device events on cuda) and the median wall time per call."""
    for _ in range(max(warmup, 1)):
        fn()
    sync(torch, device)
    times, walls = [], []
    row_start = time.perf_counter()
    for r in range(reps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            w0 = time.perf_counter()
            start.record()
            fn()
            end.record()
            end.synchronize()
            walls.append(time.perf_counter() - w0)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            w0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - w0)
            times.append(walls[-1])
        if r + 1 >= 3 and time.perf_counter() - row_start > max_seconds:
            break
    return statistics.median(times), min(times), statistics.median(walls), len(times)


def grouped_mm_status(torch, device):
    """(usable, reason): whether torch._grouped_mm runs a small bf16 case correctly here."""
    if not hasattr(torch, "_grouped_mm"):
        return False, "torch %s has no torch._grouped_mm (needs torch >= 2.8)" % torch.__version__
    try:
        g = torch.Generator(device="cpu").manual_seed(1)
        a = torch.randn(24, 32, generator=g).to(device=device, dtype=torch.bfloat16)
        b = torch.randn(3, 48, 32, generator=g).to(device=device, dtype=torch.bfloat16)
        offs = torch.tensor([8, 8, 24], dtype=torch.int32, device=device)
        y = torch._grouped_mm(a, b.transpose(-2, -1), offs=offs)
        ref = torch.cat([a[0:8] @ b[0].t(), a[8:24] @ b[2].t()])
        err = (y.float() - ref.float()).abs().max().item()
        if err > 0.05 * ref.float().abs().max().item():
            return False, "torch._grouped_mm gave wrong results here (max error %g)" % err
    except Exception as ex:  # noqa: BLE001 - any failure means "not usable here"
        return False, "torch._grouped_mm failed on %s: %s" % (device, str(ex).splitlines()[0])
    return True, "torch._grouped_mm"


def check_block(torch, block, tokens, balanced):
    """Max |grouped - loop| / max |loop| of the block output on the same input and routing."""
    x = block.x[:tokens]
    a, _ = block.forward(x, balanced)
    b, _ = block.forward(x, balanced, loop=True)
    a, b = a.float(), b.float()
    if not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
        return float("inf")
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def fmt(v, spec="%.3f"):
    return "-" if v is None else spec % v


def main(argv):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as ex:
        fail("cannot import torch (%s): run with a python3 that has torch" % ex)
    try:
        with open(args.engine_json) as f:
            engine = json.load(f)
    except (OSError, ValueError) as ex:
        fail("%s: %s" % (args.engine_json, ex))
    rows = engine.get("rows")
    if not isinstance(rows, list) or not rows:
        fail("%s: no rows (is this moe_bench's JSON?)" % args.engine_json)
    settings = engine.get("settings", {})
    warmup = args.warmup if args.warmup >= 0 else max(int(settings.get("warmup", 3)), 1)
    reps = args.reps if args.reps > 0 else int(settings.get("reps", 20))
    max_s = (
        args.max_row_seconds
        if args.max_row_seconds >= 0
        else float(settings.get("max_row_seconds", 10.0))
    )
    out_path = args.out or default_out(args.engine_json)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail("--device %s: torch.cuda.is_available() is False (torch %s, built for CUDA %s)"
                 % (args.device, torch.__version__, torch.version.cuda))
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
        cap = torch.cuda.get_device_capability(device)
    elif device.type == "cpu":
        device_name = platform.processor() or platform.machine()
        cap = None
    else:
        fail("--device %s: expected cuda, cuda:N or cpu" % args.device)
    engine_backend = settings.get("backend", "cpu")
    if engine_backend != device.type:
        print("moe_bench_torch: note: the engine ran on %s, the reference runs on %s"
              % (engine_backend, device.type), file=sys.stderr)

    usable, reason = grouped_mm_status(torch, device)
    if args.force_loop:
        use_grouped, method = False, "per-expert torch.mm loop (--force_loop)"
    elif usable:
        use_grouped, method = True, "torch._grouped_mm"
    elif args.allow_loop_fallback:
        use_grouped = False
        method = "per-expert torch.mm loop (fallback: %s)" % reason
        print("moe_bench_torch: FALLBACK: %s; timing a per-expert torch.mm loop instead, which "
              "is not the torchtitan path" % reason, file=sys.stderr)
    else:
        fail("%s. Use a torch with _grouped_mm for this device, or pass --allow_loop_fallback to "
             "time a per-expert torch.mm loop instead (and say so)." % reason)

    wanted = set(s for s in args.shapes.split(",") if s)
    groups = {}  # config key -> (cfg, [row indices]), in the rows' order
    order = []
    for idx, r in enumerate(rows):
        if wanted and r.get("shape") not in wanted:
            continue
        cfg = row_config(r)
        if r.get("routing") not in ("random", "balanced", "balanced_grouped"):
            fail("row %d: routing %r is not random, balanced or balanced_grouped"
                 % (idx, r.get("routing")))
        key = config_key(cfg)
        if key not in groups:
            groups[key] = (cfg, [])
            order.append(key)
        groups[key][1].append(idx)
    if not order:
        fail("no rows left (--shapes %r)" % args.shapes)

    print("moe_bench_torch: torch %s on %s (%s); %s; warm-up %d, reps %d (median, %s)"
          % (torch.__version__, device, device_name, method, warmup, reps,
             "cuda events" if device.type == "cuda" else "perf_counter"), flush=True)
    ceilings = engine.get("ceilings") or {}
    checks = {}
    results = {}
    with torch.inference_mode():
        for key in order:
            cfg, idxs = groups[key]
            max_t = max(rows[i]["T"] for i in idxs)
            t0 = time.perf_counter()
            block = Block(torch, cfg, device, max_t, args.seed, use_grouped)
            sync(torch, device)
            print("%s: %.2f GB of weights on %s in %.1f s" % (cfg["shape"], block.weight_gb(),
                  device, time.perf_counter() - t0), file=sys.stderr, flush=True)
            if not args.no_check and use_grouped:
                t_check = min(max_t, 64)
                errs = [check_block(torch, block, t_check, b) for b in (False, True)]
                err = max(errs)
                ok = err <= 2e-2
                checks[cfg["shape"]] = {"tokens": t_check, "max_rel_err": err, "ok": ok}
                print("%s: grouped vs torch.mm loop at T=%d: max rel err %.2e (%s)"
                      % (cfg["shape"], t_check, err, "ok" if ok else "MISMATCH"),
                      file=sys.stderr, flush=True)
                if not ok:
                    fail("%s: torch._grouped_mm disagrees with the torch.mm loop (%.3g)"
                         % (cfg["shape"], err))
            for i in idxs:
                r = rows[i]
                T = r["T"]
                balanced = r["routing"] != "random"
                x = block.x[:T]
                med, mn, wall, n = time_calls(
                    torch, device, lambda: block.forward(x, balanced), warmup, reps, max_s)
                _, counts = block.forward(x, balanced)
                hit = int((counts > 0).sum().item())
                floor_s = floor_seconds(cfg, T, hit, ceilings)
                res = {
                    "torch_ms": round(med * 1e3, 5),
                    "torch_ms_min": round(mn * 1e3, 5),
                    "torch_ms_wall": round(wall * 1e3, 5),
                    "torch_reps": n,
                    "torch_experts_hit": hit,
                    "torch_floor_ms": round(floor_s * 1e3, 5) if floor_s > 0 else None,
                    "torch_ratio_to_floor": round(med / floor_s, 5) if floor_s > 0 else None,
                }
                eng = r.get("ms_median")
                res["speedup"] = round(med * 1e3 / eng, 5) if eng else None
                results[i] = res
                print("%s T=%d %s: torch %.3f ms, engine %s ms, speed-up %s"
                      % (cfg["shape"], T, r["routing"], med * 1e3, fmt(eng),
                         fmt(res["speedup"], "%.2f")), file=sys.stderr, flush=True)
            del block
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # The merged table.
    lines = []
    c = ceilings
    if c.get("copy"):
        lines.append("engine ceilings: %s copy %.1f GB/s; floor bandwidth %.1f GB/s"
                     % ("device" if c["copy"].get("memory") == "device" else "memory",
                        c["copy"]["gbps"], c.get("floor_bandwidth_gbps") or 0.0))
    if (c.get("gemm_bf16") or {}).get("gflops"):
        g = c["gemm_bf16"]
        lines.append("engine ceilings: bf16 GEMM %.1f GFLOP/s (%d^3)" % (g["gflops"], g["m"]))
    lines.append("engine: %s; torch: %s %s on %s (%s)"
                 % ((engine.get("machine") or {}).get("backend", "?"), torch.__version__, method,
                    device, device_name))
    hdr = "%-22s %5s %-9s %10s %10s %8s %10s %8s %8s %9s" % (
        "shape", "T", "routing", "engine ms", "torch ms", "speed-up", "floor ms", "eng x fl",
        "tch x fl", "hit e/t")
    lines.append(hdr)
    for i in sorted(results):
        r, res = rows[i], results[i]
        floor_ms = r.get("floor_ms")
        eng = r.get("ms_median")
        lines.append("%-22s %5d %-9s %10s %10.3f %8s %10s %8s %8s %9s" % (
            r["shape"], r["T"], r["routing"][:9], fmt(eng), res["torch_ms"],
            fmt(res["speedup"], "%.2f"), fmt(floor_ms), fmt(r.get("ratio_to_floor"), "%.2f"),
            fmt(res["torch_ratio_to_floor"], "%.2f"),
            "%d/%d" % (r.get("experts_hit", -1), res["torch_experts_hit"])))
    lines.append("speed-up = torch ms / engine ms (> 1: the engine is faster); x fl = ms / floor "
                 "ms, each with its own experts hit; torch ms: %s"
                 % ("cuda events (engine: host clock around Forward + Synchronize; torch's "
                    "host-clock median is torch_ms_wall in the JSON)"
                    if device.type == "cuda" else "perf_counter"))
    print("\n".join(lines))

    merged = dict(engine)
    merged_rows = []
    for i, r in enumerate(rows):
        nr = dict(r)
        nr.update(results.get(i, {}))
        merged_rows.append(nr)
    merged["rows"] = merged_rows
    merged["torch"] = {
        "script": "tools/moe_bench_torch.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": str(device),
        "device_name": device_name,
        "compute_capability": list(cap) if cap else None,
        "python": platform.python_version(),
        "experts": method,
        "grouped_mm": use_grouped,
        "loop_fallback": not use_grouped,
        "timing": "cuda events, median" if device.type == "cuda" else "perf_counter, median",
        "warmup": warmup,
        "reps": reps,
        "max_row_seconds": max_s,
        "seed": args.seed,
        "checks": checks,
        "engine_json": os.path.abspath(args.engine_json),
        "path": "router (fp32 scores) -> histc counts -> argsort(stable) -> gather -> "
                "_grouped_mm(w13) -> SiLU*mul -> _grouped_mm(w2) -> * weight (fp32) -> "
                "index_add_ (fp32) -> + shared SwiGLU",
    }
    d = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(d, exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    print("wrote %s" % out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
