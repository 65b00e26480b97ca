#!/usr/bin/env python3
"""pyperf benchmark. Startup: register the region and pin all of it (upfront), or allocate the
memslot's pinned bitmap and pfn array (demand).

Example: python bench/startup.py --strategy demand --guest-size 4GiB --level 4k -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("startup")
