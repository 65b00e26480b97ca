#!/usr/bin/env python3
"""pyperf benchmark. Fault storm: V vCPUs touch guest memory by a pattern; every first touch of a
unit is a nested page fault (demand pins there, under the per-VM lock).

Example: python bench/fault_storm.py --strategy demand --guest-size 4GiB --level 4k -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("fault_storm")
