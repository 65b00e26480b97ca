"""What a kernel does: the strategies' bookkeeping, the vCPU model, cost profiles, the
one lifecycle. numpy and numba only; the names, units, strategies and configuration
modules are plain Python so that every layer can use them without the kernels."""
