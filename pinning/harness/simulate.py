"""``pinbench simulate``: one configuration's lifecycle for one or several strategies, on
any backing, and -- for several -- the answer: the cheaper one, by how much, from which
touch fraction on, and how sure (:mod:`pinning.analysis.answer`).

Each strategy runs through its backing's table entry (:mod:`pinning.harness.backings`),
the path a suite's benchmark takes; the model's events and modelled times of those runs
seed the answer's lifecycles, so the side-by-side costs one lifecycle per strategy and
the break-even search and sensitivity add only the points they need (on the model:
they are modelled figures whatever the backing).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pinning.backends.hostmem import check_fits
from pinning.harness.backings import TABLE, preflight
from pinning.model.config import BenchConfig
from pinning.model.costs import CostProfile
from pinning.model.names import InputError
from pinning.model.units import format_size
from pinning.model.workloads import Workload


def _run_object(config: BenchConfig, res: Any, profile: CostProfile) -> dict[str, Any]:
    """The JSON object of one strategy's run (the single-strategy output's shape)."""
    out = {"strategy": config.strategy, "level": config.level,
           "guest_pages": config.guest_pages, "backing": config.backing,
           "vcpus": res.config.vcpus, "kernel": config.kernel,
           "sme_coherent": config.sme_coherent, "mmu": config.mmu,
           **res.counters(), "error": res.error, "elapsed_ns": dict(res.elapsed_ns),
           "modelled_ns": {**res.model_ns, "total": res.total_model_ns},
           "cost_profile": profile.name}
    if config.backing != "sim":  # real memory or a real VM: its phases are measurements
        out["host"] = config.host
        out["measured_ns"] = {**res.elapsed_ns, "total": sum(res.elapsed_ns.values())}
    if res.backing:
        out["kvm"] = res.backing
    return out


def preflight_all(configs: list[BenchConfig], workload: Workload | None) -> None:
    """Each strategy's own preflight, then the memory of all of them at once: the model
    keeps one state per strategy while they fit in its cache's budget."""
    from pinning.model.lifecycle import STATE_CACHE_BYTES

    needs = []
    for config in configs:
        backing = preflight(config, workload, what=f"a {format_size(config.guest_size)} "
                                                   f"{config.strategy} guest at {config.level}")
        needs.append(backing.bytes_needed(config, workload))
    if len(needs) > 1:
        most = max(needs)
        check_fits(most + min(STATE_CACHE_BYTES, sum(needs) - most),
                   f"{len(configs)} strategies of a {format_size(configs[0].guest_size)} "
                   f"guest side by side")


def _workers(config: BenchConfig, workload: Workload | None) -> int:
    """Processes the answer's independent lifecycles may run in: each holds a state per
    strategy up to the lifecycle cache's budget, plus a workload, within the memory
    the headroom rule leaves (hostmem.usable_memory)."""
    from pinning.backends.hostmem import usable_memory
    from pinning.model.lifecycle import STATE_CACHE_BYTES
    from pinning.model.state import config_bytes

    one = config_bytes(replace(config, touch_fraction=1.0, backing="sim", host="warm"),
                       workload)
    per = one + min(STATE_CACHE_BYTES, 2 * one)
    usable, _ = usable_memory()
    return max(1, int(usable // per) - 1)  # the answering process keeps its own


def simulate(config: BenchConfig, names: tuple[str, ...], profile: CostProfile,
             workload: Workload | None = None, *, sensitivity: bool = False,
             vary: tuple[str, ...] = (), factors: tuple[float, float] | None = None
             ) -> dict[str, Any]:
    """Run ``config`` for each strategy of ``names``; one strategy: its run's object, as
    ``pinbench simulate --json`` prints it; several: ``runs`` by strategy plus the answer
    (``answer``, ``break_even``, with ``sensitivity`` the tornado table)."""
    from pinning.analysis import answer as A
    from pinning.model.lifecycle import warm_up

    if len(names) == 1:  # one strategy: every option given must apply to it
        configs, notes = [replace(config, strategy=names[0])], []
    else:  # side by side: each strategy takes the options that apply to it
        pairs = [config.for_strategy(s) for s in names]
        configs, notes = [c for c, _ in pairs], [n for _, n in pairs if n]
    for c in configs:
        c.check()
    if sensitivity:
        costs = A.varied_costs(profile, vary, factors or A.DEFAULT_FACTORS)
        if len(names) < 2:
            raise InputError("--sensitivity compares strategies: give two or more "
                               "(--strategy upfront,demand or all)")
    preflight_all(configs, workload)
    # Compile or load the kernels first so that no phase's time includes the JIT.
    warm_up()
    runs, lc = {}, A.Lifecycles(config, profile, workload, max_workers=_workers(config, workload))
    for c in configs:
        res = TABLE[c.backing].run(c, profile, workload)
        runs[c.strategy] = _run_object(c, res, profile)
        lc.record(c.strategy, res)
    if len(names) == 1:
        return runs[names[0]]
    # A strategy that could not run (e.g. over the memory-lock limit: refused at
    # startup, at every touch fraction and cost) has no total to compare.
    ran = tuple(s for s in names if runs[s]["error"] is None)
    sbs = A.side_by_side(lc, ran or names)
    out: dict[str, Any] = {
        "strategies": list(names),
        "config": {"guest_pages": config.guest_pages, "level": config.level,
                   "vcpus": config.vcpus,
                   "pattern": "trace" if workload is not None else config.pattern,
                   "layout": config.layout, "touch_fraction": config.touch_fraction,
                   "seed": config.seed, "backing": config.backing, "kernel": config.kernel,
                   "sme_coherent": config.sme_coherent, "mmu": config.mmu,
                   "memlock_limit": config.memlock_limit, "prefault": config.prefault,
                   "image_size": config.image_size, "acceptance": config.acceptance},
        "cost_profile": {"name": profile.name, "source": profile.source},
        "notes": notes,
        "runs": runs,
        "answer": {"cheapest": sbs.cheapest if ran else None,
                   "modelled_total_ns": {s: lc.total_ns(s) for s in names},
                   "ratio_to_cheapest": {s: sbs.ratio(s) if s in ran else None
                                         for s in names}},
    }
    if config.backing != "sim" and ran:
        measured = {s: runs[s]["measured_ns"]["total"] for s in ran}
        best = min(measured, key=measured.__getitem__)
        out["answer"]["measured"] = {
            "cheapest": best, "total_ns": measured,
            "ratio_to_cheapest": {s: measured[s] / measured[best] for s in ran}}
    why = (None if len(ran) >= 2 else
           f"fewer than two strategies ran ({', '.join(ran) or 'none'})")
    if why is None and (workload is not None or config.pattern == "boot"):
        why = "a trace's or the boot pattern's accesses are fixed: no touch fraction"
    out["break_even"] = None if why else [
        {"a": be.a, "b": be.b, "fraction": be.fraction, "cheaper_below": be.cheaper_below,
         "cheaper_above": be.cheaper_above} for be in A.break_evens(lc, ran)]
    out["break_even_note"] = why
    if sensitivity:
        if len(ran) >= 2:
            frame, base = A.sensitivity(lc, ran, costs)
            out["sensitivity"] = {**base, "rows": frame.to_dict(orient="records")}
        else:
            out["sensitivity"] = None
    out["model_runs"] = lc.runs
    return out
