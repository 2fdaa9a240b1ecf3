"""Adapters that let other tools' interfaces drive Om models.

- `om.integrations.lm_eval`: an lm-evaluation-harness model named ``om`` (needs the optional
  ``lm_eval`` extra: ``pip install "om[lm_eval]"``).

Nothing here is imported by the rest of Om, so a missing optional package only matters when its
adapter is imported.
"""
