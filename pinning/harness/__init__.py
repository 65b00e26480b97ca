"""Running things: suites, the backing table and preflight, the bench scripts' body,
``pinbench run``, compare-branches, calibrate."""
