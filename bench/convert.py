#!/usr/bin/env python3
"""pyperf benchmark. Convert: the guest converts a fraction of its memory to shared and back
to private in the middle of a run, then touches it again (guest_memfd punches the range out
and faults it in anew; the pinning strategies take one exit per request and keep the memory).

Example: python bench/convert.py --strategy gmem --guest-size 4GiB --convert-fraction 0.25
         -o out.json
Options: pinbench's (one per BenchConfig field, and --cost-profile) and pyperf's own.
"""

from pinning.harness.bench import main

if __name__ == "__main__":
    main("convert")
