#!/usr/bin/env python3
"""pyperf benchmark. Remap: the VMM remaps a fraction of guest memory in the middle of a run and
the guest touches it again (demand re-pins; upfront keeps stale pins).

Example: python bench/remap.py --strategy demand --guest-size 4GiB --level 4k -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("remap")
