"""The base of every config model: unknown keys are errors, and every field carries a description."""
from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section. `extra="forbid"` turns a misspelt key into a validation error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of this config: the same values give the same hash."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
