"""Study directory -> figures and summaries. Reads the study's Parquet files, never Ray's state.

``python -m analysis STUDY_DIR`` runs them all; each module is also a command of its own:
``python -m analysis.phase_map STUDY_DIR --x frac --y weight_decay`` (see each module's ``--help``).
"""
