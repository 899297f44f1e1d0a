"""Label files: both layouts accepted, bad rows named by file and line, ties and skips dropped and counted."""
import json

import pytest

from components.errors import DataError
from components.feedback.labels import labels_from_answers, read_label_file, write_dataset


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_both_layouts_become_preferences(tmp_path):
    rows = [{"prompt": "P", "response_a": "a1", "response_b": "b1", "choice": "B", "score": 4},
            {"prompt": "P", "response_a": "a2", "response_b": "b2", "choice": "tie"},
            {"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    records, counts = read_label_file(_jsonl(tmp_path / "l.jsonl", rows), tmp_path)
    assert records == [{"prompt": "P", "chosen": "b1", "rejected": "a1", "score": 4},
                       {"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    assert counts == {"rows": 3, "ties": 1, "preferences": 2}
    csv = tmp_path / "l.csv"
    csv.write_text("prompt,response_a,response_b,choice\nP,x,y,a\n")
    assert read_label_file(csv, tmp_path)[0] == [{"prompt": "P", "chosen": "x", "rejected": "y"}]


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "P", "response_a": "a"}, {"prompt": "P", "response_b": "b", "choice": "A"}],
     r"l.jsonl:1: 'response_b' is missing or empty"),
    ([{"prompt": "P", "response_a": "a", "response_b": "b", "choice": "A"},
      {"prompt": "P", "response_a": "a", "response_b": "b", "choice": "maybe"}], r"l.jsonl:2: choice 'maybe' is not one of"),
    ([{"prompt": "P", "response_a": "a", "response_b": "b", "choice": "A", "score": 9}], r"l.jsonl:1: score 9 is not"),
    ([{"prompt": "", "chosen": "a", "rejected": "b"}], r"l.jsonl:1: 'prompt' is missing or empty"),
    ([{"prompt": "P", "chosen": "a", "rejected": "b"}, {"prompt": "P", "chosen": "a", "rejected": "a"}],
     r"l.jsonl:2: 'chosen' and 'rejected' are the same response"),
])
def test_bad_label_files_name_the_line(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_label_file(_jsonl(tmp_path / "l.jsonl", rows), tmp_path)


def test_empty_label_file_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e.jsonl: no rows"):
        read_label_file(tmp_path / "e.jsonl", tmp_path)
    with pytest.raises(DataError, match="no usable preference labels"):
        write_dataset([], {}, "x", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_form_answers_drop_ties_and_unanswered_pairs():
    pairs = [{"pair": i, "prompt": "P", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(4)]
    choices = [{"pair": 0, "choice": "A", "score": None}, {"pair": 1, "choice": "B", "score": 5},
               {"pair": 2, "choice": "tie", "score": None}]  # pair 3 never answered
    records, counts = labels_from_answers(pairs, choices)
    assert records == [{"prompt": "P", "chosen": "a0", "rejected": "b0"},
                       {"prompt": "P", "chosen": "b1", "rejected": "a1", "score": 5}]
    assert counts == {"pairs": 4, "answered": 3, "ties": 1, "unanswered": 1, "preferences": 2}
    pairs[0]["response_b"] = "a0 "  # two samples that came out the same: nothing to prefer, dropped and counted
    records, counts = labels_from_answers(pairs, choices)
    assert records == [{"prompt": "P", "chosen": "b1", "rejected": "a1", "score": 5}]
    assert counts["identical"] == 1 and counts["preferences"] == 1


def test_a_label_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"prompt,response_a,response_b,choice\nP,x,y,A\nP,\xe9t\xe9,y,B\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 text"):
        read_label_file(path, tmp_path)
