"""BenchConfig: every parameter of one run, the one place their names, types and defaults live.

The bench scripts' options, the CLI's options, suite TOML keys and the results columns
(``param.<name>``) are all generated from :class:`BenchConfig`'s fields and the
:class:`Option` in each field's metadata. Plain Python (no numpy): the CLI and the
analysis layer import it without the model's kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

from pinning.model import strategies
from pinning.model.host import Host, parse_kernel
from pinning.model.names import (
    ACCEPTANCES,
    BACKINGS,
    FAMILIES,
    FAMILY_PATTERN,
    HOST_STATES,
    LAYOUTS,
    MAX_VCPUS,
    MMUS,
    PATTERNS,
    PREFAULTS,
    SME_COHERENT,
    InputError,
    choice,
)
from pinning.model.units import LEVELS, PAGE_SIZE, format_size, parse_size, unit_pages

#: How a parameter's text is read: its Python type follows from the kind.
KINDS = ("choice", "size", "int", "fraction", "memlock", "kernel")
UNLIMITED = ("unlimited", "none", "inf")


@dataclass(frozen=True)
class Option:
    """How one BenchConfig field is typed, validated and offered on a command line."""

    help: str
    kind: str = "choice"
    #: the allowed values of a choice (a callable: the strategy registry can grow)
    choices: Callable[[], tuple[str, ...]] | None = None
    metavar: str | None = None

    @property
    def type(self) -> type:
        """The Python type of the value (None allowed for a memory-lock limit)."""
        return {"choice": str, "size": int, "int": int, "fraction": float,
                "memlock": int, "kernel": str}[self.kind]


def _opt(help: str, kind: str = "choice", choices=None, metavar=None, **kw: Any) -> Any:
    return field(metadata={"option": Option(help, kind, choices, metavar)}, **kw)


@dataclass(frozen=True)
class BenchConfig:
    """One run: a workload family and every parameter of its lifecycle."""

    workload: str = _opt("workload family: which phases run and which are measured",
                         choices=lambda: FAMILIES)
    strategy: str = _opt("how KVM holds the guest's memory", choices=strategies.names,
                         default="demand")
    guest_size: int = _opt("guest memory, e.g. 4GiB (KiB, MiB, GiB, TiB)", "size",
                           metavar="SIZE", default=1 << 30)
    level: str = _opt("mapping level of host backing and nested mappings",
                      choices=lambda: tuple(LEVELS), default="4k")
    vcpus: int = _opt(f"vCPUs touching memory (1-{MAX_VCPUS})", "int", metavar="N", default=1)
    pattern: str = _opt("the guest's access pattern", choices=lambda: PATTERNS,
                        default="sequential")
    layout: str = _opt("how vCPUs share the guest: own slices, or one stream round-robin",
                       choices=lambda: LAYOUTS, default="slices")
    touch_fraction: float = _opt("fraction of the guest's units the pattern touches", "fraction",
                                 metavar="F", default=1.0)
    seed: int = _opt("seed of the random patterns", "int", metavar="N", default=0)
    backing: str = _opt("guest memory: the sim's arrays, also real host memory, or a real "
                        "KVM guest", choices=lambda: BACKINGS, default="sim")
    remap_fraction: float = _opt("fraction of the guest the VMM remaps (remap family)",
                                 "fraction", metavar="F", default=0.1)
    host: str = _opt("host memory before a real run: warmed right before, or left idle so "
                     "the hypervisor below reclaims it", choices=lambda: HOST_STATES,
                     default="warm")
    memlock_limit: int | None = _opt("RLIMIT_MEMLOCK of the VMM (unlimited: as when "
                                     "privileged)", "memlock", metavar="SIZE", default=None)
    kernel: str = _opt("host kernel version X.Y whose rules apply (from 5.17, the RFC's "
                       "baseline; changes at 5.18, 6.15, 6.17)", "kernel", metavar="X.Y",
                       default="5.17")
    sme_coherent: str = _opt("whether the CPU keeps caches coherent across encryption domains "
                             "(X86_FEATURE_SME_COHERENT: no CLFLUSH where the kernel checks it)",
                             choices=lambda: SME_COHERENT, default="yes")
    mmu: str = _opt("KVM's MMU: the TDP MMU (an SEV host) or the shadow MMU, which prefetches "
                    "4 KiB neighbours", choices=lambda: MMUS, default="tdp")
    prefault: str = _opt("guest_memfd only: fault guest memory in before the guest runs -- "
                         "none, fallocate (allocate folios), map (KVM_PRE_FAULT_MEMORY)",
                         choices=lambda: PREFAULTS, default="none")
    image_size: int = _opt("guest_memfd only: the encrypted launch image put in with "
                           "SNP_LAUNCH_UPDATE, e.g. 4MiB (at most the guest)", "size",
                           metavar="SIZE",
                           default=4 << 20)
    convert_fraction: float = _opt("fraction of the guest converted private -> shared -> "
                                   "private (convert family)", "fraction", metavar="F",
                                   default=0.1)
    acceptance: str = _opt("guest_memfd only: the guest accepts its memory as it first uses "
                           "it (lazy) or all at boot (eager)", choices=lambda: ACCEPTANCES,
                           default="lazy")

    @property
    def guest_pages(self) -> int:
        return self.guest_size // PAGE_SIZE

    @property
    def name(self) -> str:
        """Stable, readable benchmark name, e.g. ``fault_storm/demand/64GiB/4k/4vcpu/random``."""
        parts = [self.workload, self.strategy, format_size(self.guest_size), self.level]
        if self.backing != "sim":
            parts.append(self.backing if self.host == "warm" else f"{self.backing}-cold")
        if self.workload in ("fault_storm", "lifecycle", "remap", "convert") or (
                self.backing != "sim"):
            parts.append(f"{self.vcpus}vcpu")
            parts.append(self.pattern if self.layout == "slices" else f"{self.pattern}-shared")
        if self.workload != "startup" and self.touch_fraction != 1.0:
            parts.append(f"touch{_pct(self.touch_fraction)}")
        if self.workload == "remap":
            parts.append(f"remap{_pct(self.remap_fraction)}")
        if self.workload == "convert":
            parts.append(f"convert{_pct(self.convert_fraction)}")
        if self.prefault != default("prefault"):
            parts.append(f"prefault-{self.prefault}")
        if self.image_size != default("image_size"):
            parts.append(f"image{format_size(self.image_size)}")
        if self.acceptance != default("acceptance"):
            parts.append(f"{self.acceptance}-accept")
        if self.seed != 0 and self.pattern != "sequential":
            parts.append(f"seed{self.seed}")
        if self.memlock_limit is not None:
            parts.append(f"memlock{format_size(self.memlock_limit)}")
        # host parameters, where they differ from the default host
        if self.kernel != default("kernel"):
            parts.append(f"k{self.kernel}")
        if self.sme_coherent != default("sme_coherent"):
            parts.append("noncoherent")
        if self.mmu != default("mmu"):
            parts.append(f"{self.mmu}-mmu")
        return "/".join(parts)

    @property
    def host_params(self) -> Host:
        """The host parameters (kernel, coherence, MMU), parsed."""
        return Host.of(self.kernel, self.sme_coherent, self.mmu)

    def to_argv(self) -> list[str]:
        """Command-line options of a bench script that reproduce this configuration."""
        argv = []
        for f in option_fields():
            argv += [flag(f.name), to_text(getattr(self, f.name))]
        return argv

    def params(self) -> dict[str, str | int | float]:
        """The parameters as pyperf metadata (``param.<name>``; an unlimited memory-lock
        limit is left out: pyperf metadata has no null)."""
        return {f"param.{k}": v for k, v in asdict(self).items() if v is not None}

    def check(self) -> None:
        """Refuse parameters no backing can run, with one clear line (the backing's own
        limits are checked by the harness's backing table)."""
        for f in fields(self):
            opt = option(f)
            if opt.kind == "choice":
                choice(f.name, getattr(self, f.name), opt.choices())
        unit_bytes = unit_pages(self.level) * PAGE_SIZE
        if self.guest_size <= 0:
            raise InputError(f"guest_size {self.guest_size} must be greater than zero")
        if self.guest_size % unit_bytes:
            raise InputError(f"guest_size {format_size(self.guest_size)} is not a multiple of "
                             f"the {self.level} mapping size ({format_size(unit_bytes)})")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise InputError(f"vcpus {self.vcpus} must lie between 1 and {MAX_VCPUS}")
        for key in ("touch_fraction", "remap_fraction", "convert_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise InputError(f"{key} {getattr(self, key)} must lie between 0 and 1")
        if self.seed < 0:
            raise InputError(f"seed {self.seed} must not be negative")
        if self.memlock_limit is not None and self.memlock_limit < 0:
            raise InputError(f"memlock_limit {self.memlock_limit} must not be negative")
        parse_kernel(self.kernel)
        self._check_memory_kind()
        own = FAMILY_PATTERN.get(self.workload)
        if own is not None and self.pattern != own:
            raise InputError(f"the {self.workload} family runs the {own} pattern only "
                             f"(got pattern {self.pattern!r})")
        if self.pattern == "boot" and self.touch_fraction != 1.0:
            raise InputError("the boot pattern touches what a booting guest touches: "
                             "touch_fraction does not apply")

    def for_strategy(self, name: str) -> tuple[BenchConfig, str | None]:
        """This configuration for strategy ``name`` in a side-by-side: the options that
        do not apply to it are left at their defaults (a memory-lock limit for a
        guest_memfd strategy, gmem's launch options for the others), with a note
        saying so (None if nothing was left out)."""
        strategy = strategies.get(name)
        changes: dict[str, Any] = {}
        if strategy.guest_memfd:
            if self.memlock_limit is not None:
                changes["memlock_limit"] = None
        else:
            changes.update({k: default(k) for k in GMEM_ONLY if getattr(self, k) != default(k)})
        out = replace(self, strategy=name, **changes)
        if not changes:
            return out, None
        why = ("pins nothing and is not charged to RLIMIT_MEMLOCK" if strategy.guest_memfd
               else "its memory is the VMM's own, not a guest_memfd")
        return out, f"{name}: {', '.join(changes)} not applied ({why})"

    def _check_memory_kind(self) -> None:
        """Options that hold for guest_memfd strategies only, and what gmem cannot take."""
        strategy = strategies.get(self.strategy)
        if not strategy.guest_memfd:
            for key in GMEM_ONLY:
                if getattr(self, key) != default(key):
                    raise InputError(f"{key} applies to guest_memfd strategies only, not to "
                                     f"{self.strategy!r} (its memory is the VMM's own)")
            return
        if self.memlock_limit is not None:
            raise InputError(f"strategy {self.strategy!r} pins nothing and guest_memfd memory "
                             "is not charged to RLIMIT_MEMLOCK: memlock_limit does not apply")
        if self.level != "4k":
            raise InputError(f"strategy {self.strategy!r} maps 4k only: guest_memfd folios "
                             f"are order 0 (kvm_gmem_get_folio), not {self.level}")
        if self.image_size < 0 or self.image_size % PAGE_SIZE:
            raise InputError(f"image_size {self.image_size} must be a multiple of 4KiB "
                             "(an image larger than the guest fills all of it)")


#: Options that apply to guest_memfd strategies only (others keep the default).
GMEM_ONLY = ("prefault", "image_size", "acceptance")


def option(f: Field) -> Option:
    """The Option of a BenchConfig field."""
    return f.metadata["option"]


def option_fields() -> Iterator[Field]:
    """The fields a bench script or a suite sets (all but the workload family)."""
    return (f for f in fields(BenchConfig) if f.name != "workload")


def default(name: str) -> Any:
    """A field's default (the one set of defaults)."""
    f = next(f for f in fields(BenchConfig) if f.name == name)
    return None if f.default is MISSING else f.default


def family_defaults(workload: str) -> dict[str, Any]:
    """Defaults a family sets apart from the fields' own (a one-pattern family's pattern)."""
    own = FAMILY_PATTERN.get(workload)
    return {} if own is None else {"pattern": own}


def flag(name: str) -> str:
    """A field's command-line flag: ``guest_size`` -> ``--guest-size``."""
    return "--" + name.replace("_", "-")


def to_text(value: Any) -> str:
    """A field value as its command-line text (read back by :func:`parse_value`)."""
    return "unlimited" if value is None else str(value)


def parse_value(name: str, value: Any, what: str | None = None, *,
                text: bool = False) -> Any:
    """A field's value from a TOML value (numbers must be numbers), or with ``text`` from
    command-line text; InputError naming the field (or ``what``, e.g. "guest size")."""
    f = next((f for f in fields(BenchConfig) if f.name == name), None)
    if f is None:
        raise InputError(f"unknown parameter {name!r}")
    kind = option(f).kind
    what = what or name
    if kind == "memlock":
        if value is None or (isinstance(value, str) and value.strip().lower() in UNLIMITED):
            return None
        if isinstance(value, str) and value.strip() == "0":
            return 0
    if kind == "kernel":
        if not isinstance(value, str):  # a TOML number would read 6.10 as 6.1
            raise InputError(f"{what} must be a version string like \"6.10\", got {value!r}")
        major, minor = parse_kernel(value)
        return f"{major}.{minor}"
    if kind in ("size", "memlock"):
        if isinstance(value, bool):
            raise InputError(f"{what} must be a size, got {value!r}")
        return parse_size(str(value), what)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | (str if text else int)):
            raise InputError(f"{what} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{what} {value!r} is not an integer") from None
    if kind == "fraction":
        if isinstance(value, bool) or not isinstance(value, int | float | (str if text else float)):
            raise InputError(f"{what} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise InputError(f"{what} {value!r} is not a number") from None
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {value!r}")
    return value


def _pct(x: float) -> str:
    return f"{x * 100:g}%"
