#!/usr/bin/env python3
"""pyperf benchmark. Boot: startup, then what the guest's own kernel touches while it boots
(its memory map and a fixed working set: --pattern boot); modelled boot = a fixed part +
startup + these touches (docs/model.md).

Example: python bench/boot.py --strategy demand-v2 --guest-size 16GiB -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("boot")
