"""A slow, plain pure-Python reference model of upfront and demand pinning.

Written straight from DESIGN.md sections 1/1a and docs/model.md, independently
of ``pinning/model/kernels/engine.py``: dicts, sets and lists, one step of the spec per line.
It is the test oracle; speed does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE_SIZE = 4096
LEVEL_UNIT_PAGES: dict[str, int] = {"4k": 1, "2m": 512, "1g": 262_144}

COUNTER_NAMES: tuple[str, ...] = (
    "npf_exits",
    "frames_zeroed",
    "pins",
    "unpins",
    "clflush_bytes",
    "page_flushes",
    "wbinvd",
    "stale_pins_peak",
    "unpinned_mapped_hazards",
    "pinned_pages_peak",
    "pinned_pages_end",
    "metadata_bytes",
    "leaked_refs",
)

Op = tuple[str, int, int]


class MemlockError(Exception):
    """Pinning one more page would exceed the memory-lock limit."""


@dataclass
class RefResult:
    """What one reference run returns: counters, error flag/message, final state."""

    counters: dict[str, int]
    error: str | None
    state: dict
    ops_done: int


@dataclass
class RefVM:
    """The whole model state: host frames, VMM mapping, nested map and KVM metadata."""

    strategy: str
    guest_pages: int
    unit_pages: int
    limit_pages: int | None  # floor(memlock_limit / 4096); None means no limit
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    host_map: dict[int, int] = field(default_factory=dict)  # gfn -> pfn (VMM mapping)
    refs: dict[int, int] = field(default_factory=dict)  # pfn -> reference count (> 0)
    pins: dict[int, int] = field(default_factory=dict)  # pfn -> pin count (> 0)
    free: list[int] = field(default_factory=list)  # free stack, bottom first
    next_pfn: int = 1  # lowest never-used pfn
    nested: set[int] = field(default_factory=set)  # units with a nested mapping
    pinned: int = 0  # pages pinned now
    stale: int = 0  # stale pins now
    region: dict[int, int] = field(default_factory=dict)  # upfront page array (nonzero)
    bitmap: set[int] = field(default_factory=set)  # demand pinned bitmap (set gfns)
    pfns: dict[int, int] = field(default_factory=dict)  # demand pfn array (nonzero)

    # ---- host frames -------------------------------------------------------------

    def alloc_frame(self) -> int:
        """A new frame: the most recently freed one, else the lowest never-used pfn."""
        if self.free:
            pfn = self.free.pop()
        else:
            pfn = self.next_pfn
            self.next_pfn += 1
        assert pfn not in self.refs and pfn not in self.pins
        self.counters["frames_zeroed"] += 1
        return pfn

    def get_ref(self, pfn: int) -> None:
        self.refs[pfn] = self.refs.get(pfn, 0) + 1

    def put_ref(self, pfn: int) -> None:
        """Drop one reference; a frame whose reference count reaches 0 is freed."""
        self.refs[pfn] -= 1
        assert self.refs[pfn] >= 0
        if self.refs[pfn] == 0:
            del self.refs[pfn]
            assert pfn not in self.pins
            self.free.append(pfn)

    def populate(self, gfn: int) -> None:
        """Give ``gfn`` a VMM frame if it has none (the VMM's mapping holds one reference)."""
        if gfn not in self.host_map:
            pfn = self.alloc_frame()
            self.host_map[gfn] = pfn
            self.get_ref(pfn)

    # ---- pins --------------------------------------------------------------------

    def check_limit(self) -> None:
        """A pin is allowed while (pinned + 1) * 4096 <= limit."""
        if self.limit_pages is not None and self.pinned + 1 > self.limit_pages:
            raise MemlockError

    def pin(self, pfn: int) -> None:
        self.get_ref(pfn)
        self.pins[pfn] = self.pins.get(pfn, 0) + 1
        self.pinned += 1
        self.counters["pins"] += 1
        self.counters["pinned_pages_peak"] = max(self.counters["pinned_pages_peak"], self.pinned)

    def unpin(self, gfn: int, pfn: int) -> None:
        """Drop KVM's pin on ``pfn``, pinned for ``gfn``; a stale pin ends with it."""
        if self.host_map.get(gfn) != pfn:
            self.stale -= 1
        self.pins[pfn] -= 1
        if self.pins[pfn] == 0:
            del self.pins[pfn]
        self.pinned -= 1
        self.counters["unpins"] += 1
        self.put_ref(pfn)

    def is_pinned_for(self, gfn: int) -> int:
        """The frame KVM pins for ``gfn`` (0: none)."""
        if self.strategy == "upfront":
            return self.region.get(gfn, 0)
        return self.pfns[gfn] if gfn in self.bitmap else 0

    # ---- lifecycle ---------------------------------------------------------------

    def unit_range(self, unit: int) -> range:
        return range(unit * self.unit_pages, (unit + 1) * self.unit_pages)

    def startup(self) -> None:
        """Register the region (upfront: populate + pin + flush all) or allocate metadata."""
        n = self.guest_pages
        if self.strategy == "upfront":
            if self.limit_pages is not None and n > self.limit_pages:
                raise MemlockError  # before anything else: every counter stays 0
            self.counters["metadata_bytes"] = 8 * n
            for gfn in range(n):
                self.populate(gfn)
                pfn = self.host_map[gfn]
                self.region[gfn] = pfn
                self.pin(pfn)
                self.counters["clflush_bytes"] += PAGE_SIZE
        else:
            self.counters["metadata_bytes"] = 8 * n + 8 * ((n + 63) // 64)

    def access(self, gfn: int) -> None:
        """A guest access to ``gfn``: a nested page fault if its unit is unmapped."""
        unit = gfn // self.unit_pages
        if unit in self.nested:
            return
        self.counters["npf_exits"] += 1
        pages = self.unit_range(unit)
        for g in pages:
            self.populate(g)
        if self.strategy == "upfront":
            for g in pages:
                if self.pins.get(self.host_map[g], 0) == 0:
                    self.counters["unpinned_mapped_hazards"] += 1
        else:
            for g in pages:
                pfn = self.host_map[g]
                if g in self.bitmap and self.pfns[g] == pfn:
                    continue
                if g in self.bitmap:
                    self.counters["page_flushes"] += 1
                    self.bitmap.discard(g)
                    self.unpin(g, self.pfns[g])
                self.check_limit()  # raises: nothing more happens in this fault
                self.bitmap.add(g)
                self.pfns[g] = pfn
                self.pin(pfn)
            self.counters["clflush_bytes"] += self.unit_pages * PAGE_SIZE
        self.nested.add(unit)

    def remap(self, gfn: int, npages: int) -> None:
        """The VMM unmaps and maps again ``[gfn, gfn+npages)``, widened to whole units."""
        first_unit = gfn // self.unit_pages
        end_unit = (gfn + npages + self.unit_pages - 1) // self.unit_pages
        for unit in range(first_unit, end_unit):
            for g in self.unit_range(unit):
                if g in self.host_map:
                    pfn = self.host_map.pop(g)
                    if self.pins.get(pfn, 0) > 0:
                        self.stale += 1
                    self.put_ref(pfn)
            self.nested.discard(unit)
        self.counters["stale_pins_peak"] = max(self.counters["stale_pins_peak"], self.stale)
        if self.strategy == "upfront":
            self.counters["wbinvd"] += 1

    def teardown(self) -> None:
        """VM destroy: WBINVD once, drop every pin ascending, drop all nested mappings.

        KVM's metadata (page array; bitmap and pfn array) is freed with the VM
        (DESIGN 1: "free the arrays"), so the final state shows it empty.
        """
        self.counters["wbinvd"] += 1
        if self.strategy == "upfront":
            for g in sorted(self.region):
                pfn = self.region.pop(g)
                self.unpin(g, pfn)
        else:
            for g in sorted(self.bitmap):
                self.bitmap.discard(g)
                self.unpin(g, self.pfns[g])
            self.pfns.clear()
        self.nested.clear()

    def finish(self) -> None:
        """End-of-run counters, computed whether or not teardown ran."""
        self.counters["pinned_pages_end"] = self.pinned
        self.counters["leaked_refs"] = sum(self.refs.values()) - len(self.host_map)

    def snapshot(self) -> dict:
        """The state in the shape of ``pinning.model.state.snapshot``."""
        return {
            "host_map": dict(self.host_map),
            "refs": dict(self.refs),
            "pins": dict(self.pins),
            "free": list(self.free),
            "next_pfn": self.next_pfn,
            "nested": set(self.nested),
            "pinned": self.pinned,
            "stale": self.stale,
            "region": dict(self.region),
            "bitmap": set(self.bitmap),
            "pfns": {g: p for g, p in self.pfns.items() if p},
        }


def run_reference(
    strategy: str,
    guest_pages: int,
    level: str,
    ops: list[Op],
    memlock_limit: int | None = None,
    teardown: bool = True,
) -> RefResult:
    """Run startup, ``ops`` and (unless ``teardown`` is False) teardown; return the result.

    ``ops`` holds ``("access", gfn, 1)`` and ``("remap", gfn, npages)`` tuples.
    """
    live, destroyed = run_reference_both(strategy, guest_pages, level, ops, memlock_limit)
    return destroyed if teardown else live


def run_reference_both(
    strategy: str,
    guest_pages: int,
    level: str,
    ops: list[Op],
    memlock_limit: int | None = None,
) -> tuple[RefResult, RefResult]:
    """One run, seen twice: (stopped before teardown, after teardown)."""
    if strategy not in ("upfront", "demand"):
        raise ValueError(f"unknown strategy {strategy!r}")
    unit = LEVEL_UNIT_PAGES[level]
    if guest_pages <= 0 or guest_pages % unit:
        raise ValueError("guest is not a whole number of units")
    limit_pages = None if memlock_limit is None else memlock_limit // PAGE_SIZE
    vm = RefVM(strategy, guest_pages, unit, limit_pages)
    error = None
    done = 0
    try:
        vm.startup()
    except MemlockError:
        # Upfront: the VM never runs and is never destroyed.
        vm.finish()
        res = RefResult(vm.counters, "memory lock limit exceeded at startup", vm.snapshot(), 0)
        return res, res
    try:
        for kind, gfn, npages in ops:
            if not 0 <= gfn < guest_pages or npages < 1 or (
                kind == "remap" and gfn + npages > guest_pages
            ):
                raise ValueError(f"operation {kind} {gfn} {npages} outside the guest")
            if kind == "access":
                vm.access(gfn)
            elif kind == "remap":
                vm.remap(gfn, npages)
            else:
                raise ValueError(f"unknown operation {kind!r}")
            done += 1
    except MemlockError:
        error = f"memory lock limit exceeded at operation {done + 1}"
    vm.finish()
    live = RefResult(dict(vm.counters), error, vm.snapshot(), done)
    vm.teardown()
    vm.finish()
    return live, RefResult(vm.counters, error, vm.snapshot(), done)


def pattern_ops(pattern: str, guest_pages: int, level: str, touch_fraction: float,
                seed: int = 0) -> list[Op]:
    """The access list a ``sequential`` or ``random`` pattern stands for."""
    import numpy as np  # only to reproduce the documented shuffle

    unit = LEVEL_UNIT_PAGES[level]
    n_units = guest_pages // unit
    count = int(n_units * touch_fraction)
    if pattern == "sequential":
        units = list(range(count))
    elif pattern == "random":
        arr = np.arange(n_units, dtype=np.uint32)
        np.random.default_rng(seed).shuffle(arr)
        units = [int(u) for u in arr[:count]]
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return [("access", u * unit, 1) for u in units]
