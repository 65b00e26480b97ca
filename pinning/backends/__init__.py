"""The real machine: libc, host memory, real guest RAM, a KVM guest, QEMU."""
