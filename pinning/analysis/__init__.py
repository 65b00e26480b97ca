"""Results to answers: tidy frames, formatting, statistics, compare, ground truth, plots,
reports. pandas, scipy and matplotlib; the model only lazily, where a report re-runs it."""
