"""Typed configuration: one pydantic model per stage, composed into `PipelineConfig`."""
from components.config.base import StrictModel
from components.config.loading import load_config, parse_overrides
from components.config.pipeline import PipelineConfig

__all__ = ["StrictModel", "PipelineConfig", "load_config", "parse_overrides"]
