#!/usr/bin/env python3
"""pyperf benchmark. Teardown: VM destroy after the guest touched its memory: WBINVD, then unpin
every pinned page.

Example: python bench/teardown.py --strategy demand --guest-size 4GiB --level 4k -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("teardown")
