"""Dagster wiring, loaded by `dg.load_from_defs_folder`: each area (raw_text, and later personas, expansion, hub,
synthesis, evaluation) has its own folder of assets, checks, sensors and schedules. The method itself lives in lib/."""
