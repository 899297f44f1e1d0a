"""TRL's dataset formats from JSONL, CSV and Parquet normalise to the standard records."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.config import DatasetSource
from components.data.formats import PREFERENCE_FORMATS, SFT_FORMATS, detect_format, to_records
from components.data.sources import read_rows
from components.errors import DataError

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def normalise(path, allowed, tokenizer):
    return [r for _, r in to_records(read_rows(DatasetSource(path=str(path)), "/tmp"), "auto", allowed, tokenizer)]


def test_detect_format():
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"prompt": "a", "chosen": "b", "rejected": "c"}) == "preference"
    assert detect_format({"chosen": "b", "rejected": "c"}) == "hh"
    assert detect_format({"prompt": "a", "responses": []}) == "ranking"
    assert detect_format({"text": "a"}) is None


def test_messages_use_the_chat_template(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Review X"},
                                             {"role": "assistant", "content": "Great."}]}) + "\n")
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        (rec,) = normalise(path, SFT_FORMATS, tokenizer)
    finally:
        tokenizer.chat_template = None
    user = [{"role": "user", "content": "Review X"}]  # kept for scorers with their own template
    assert rec == {"prompt": "<|user|>Review X\n<|assistant|>", "completion": "Great.\n", "prompt_messages": user}
    (plain,) = normalise(path, SFT_FORMATS, tokenizer)  # no template: a plain transcript
    assert plain == {"prompt": "user: Review X\nassistant:", "completion": " Great.\n", "prompt_messages": user}


def test_messages_must_end_with_the_assistant(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: 'messages' needs at least two messages"):
        normalise(path, SFT_FORMATS, tokenizer)


def test_hh_full_text_splits_at_the_last_assistant_turn(tmp_path, tokenizer):
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: review X\n\nAssistant:"
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": prompt + " Great.", "rejected": prompt + " Dull."}) + "\n"
                    + json.dumps({"chosen": "no turns", "rejected": "x"}) + "\n")
    with pytest.raises(DataError, match=r"hh.jsonl:2: HH format: 'chosen' has no"):
        normalise(path, PREFERENCE_FORMATS, tokenizer)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert normalise(path, PREFERENCE_FORMATS, tokenizer) == [{"prompt": prompt, "chosen": " Great.", "rejected": " Dull."}]


def test_csv_and_parquet_sources(tmp_path, tokenizer):
    csv_path = tmp_path / "pref.csv"
    csv_path.write_text('prompt,chosen,rejected\nReview X:," Great."," Dull."\nReview Y:," Fun.",\n')
    with pytest.raises(DataError, match=r"pref.csv:3: missing column 'rejected'"):
        normalise(csv_path, PREFERENCE_FORMATS, tokenizer)
    pq_path = tmp_path / "rank.parquet"
    pq.write_table(pa.table({"prompt": ["Review X:"], "responses": [[" Great.", " Fine.", " Dull."]]}), pq_path)
    pairs = normalise(pq_path, PREFERENCE_FORMATS, tokenizer)
    assert len(pairs) == 3 and pairs[0] == {"prompt": "Review X:", "chosen": " Great.", "rejected": " Fine."}
