"""Prefect tasks: one thin wrapper per stage (typed config + upstream StageOutputs in, StageOutput out)."""
