"""The forms a person fills in the Prefect UI while a flow waits (`pause_flow_run(wait_for_input=...)`).

The UI renders a RunInput's JSON schema field by field: a field's title is its label and its description the text
under it. So each feedback pair is its own field whose label and description carry the prompt and both responses
(text, not inputs), and whose only input is the choice; a pair's number is in the field's name, not editable."""
from __future__ import annotations

from typing import Literal

from prefect.input import RunInput
from pydantic import Field, create_model

Choice = Literal["A", "B", "tie", "skip"]
Score = Literal["none", "1", "2", "3", "4", "5"]  # a select in the UI (an `int | None` renders as a type toggle)


class Approval(RunInput):
    """The form a person fills in the Prefect UI to let a candidate become champion."""

    approve: bool = Field(False, description="Promote this candidate to champion.")
    comment: str = Field("", description="Why (kept with the decision).")


def shown(text: str, limit: int = 600) -> str:
    """Text as the UI's markdown shows it verbatim: one paragraph, `<...>` (chat tokens) not taken for HTML."""
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>").replace("*", "\\*").replace("_", "\\_")


def feedback_form(pairs: list[dict]) -> type[RunInput]:
    """A RunInput with `pair_1` ... `pair_n` (the choice, default skip) and `pair_1_score` ... (1-5 or none)."""
    fields = {}
    for n, p in enumerate(pairs, start=1):
        fields[f"pair_{n}"] = (Choice, Field(
            "skip", title=f"Pair {n} of {len(pairs)}",
            description=f"**Prompt:** {shown(p['prompt'])}\n\n**A:** {shown(p['response_a'])}\n\n"
                        f"**B:** {shown(p['response_b'])}\n\nWhich response is better? A, B, tie, or skip if unsure."))
        fields[f"pair_{n}_score"] = (Score, Field("none", title=f"Pair {n}: quality of the better response, 1-5"))
    return create_model("FeedbackForm", __base__=RunInput, __doc__="Pick the better response of each pair.", **fields)


def answers(form: RunInput, pairs: list[dict]) -> list[dict]:
    """The form's values as the labels' answers: [{"pair", "choice", "score"}] in pair order."""
    return [{"pair": p["pair"], "choice": getattr(form, f"pair_{n}"), "score": _score(getattr(form, f"pair_{n}_score"))}
            for n, p in enumerate(pairs, start=1)]


def _score(value: str) -> int | None:
    return None if value == "none" else int(value)
