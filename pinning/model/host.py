"""What changes the counts besides the strategy: the host kernel's version, whether the CPU
keeps encrypted memory coherent, and the KVM MMU (docs/model.md, "Host parameters").

Plain Python: parsed and validated before anything imports the kernels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pinning.model.names import InputError

#: The oldest kernel modelled: the RFC's baseline (v5.17-rc6).
FIRST_KERNEL = (5, 17)
#: Versions at which a modelled rule changes (docs/model.md).
NOTIFIER_FLUSH = (5, 18)  # 683412ccf612: WBINVD per invalidation and at notifier release
LONGTERM_UPFRONT = (6, 15)  # 7e066cb9b71a: FOLL_LONGTERM for the registered region
NO_DESTROY_FLUSH = (6, 17)  # 7e00013bd339, a77896eea33d: WBNOINVD, none in sev_vm_destroy
CHANGES = (FIRST_KERNEL, NOTIFIER_FLUSH, LONGTERM_UPFRONT, NO_DESTROY_FLUSH)
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)\s*$")


def _text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_kernel(text: str) -> tuple[int, int]:
    """``"6.17"`` -> (6, 17); InputError naming what is allowed otherwise."""
    m = _VERSION.match(str(text))
    version = (int(m.group(1)), int(m.group(2))) if m else None
    if version is None or version < FIRST_KERNEL:
        raise InputError(f"kernel {text!r} is not a version the model knows: give X.Y from "
                         f"{_text(FIRST_KERNEL)} on (its rules change at "
                         f"{', '.join(_text(v) for v in CHANGES[1:])})")
    return version


@dataclass(frozen=True)
class Host:
    """The host parameters of a run, and the kernel rules they select."""

    kernel: tuple[int, int]
    sme_coherent: bool
    shadow_mmu: bool

    @classmethod
    def of(cls, kernel: str, sme_coherent: str, mmu: str) -> Host:
        return cls(parse_kernel(kernel), sme_coherent == "yes", mmu == "shadow")

    @property
    def notifier_flush(self) -> bool:
        """One whole-cache write-back per invalidation overlapping a memslot, and at the
        notifier's release (``sev_guest_memory_reclaimed``)."""
        return self.kernel >= NOTIFIER_FLUSH

    @property
    def destroy_flush(self) -> bool:
        """``sev_vm_destroy`` writes back all caches (until 6.17)."""
        return self.kernel < NO_DESTROY_FLUSH
