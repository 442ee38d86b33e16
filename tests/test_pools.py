"""Pool loading: every format, the truncated packaged file, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from divcore.errors import InputError
from experiments.data.pools import embedding_text, iter_json_array, load_conversations, sample_pool

CONV = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]


def test_authors_file_and_numbered_directory(tmp_path):
    (tmp_path / "pool.json").write_text(json.dumps([CONV, {"conversations": CONV, "id": "x", "quality": 0.5}]))
    convs = load_conversations(tmp_path / "pool.json")
    assert convs[0]["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert convs[1]["id"] == "x" and convs[1]["quality"] == 0.5
    d = tmp_path / "dir"
    d.mkdir()
    for i in (10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0):
        (d / f"{i}.json").write_text(json.dumps([[{"from": "human", "value": f"q{i}"}, CONV[1]]]))
    assert [c["messages"][0]["content"] for c in load_conversations(d)] == [f"q{i}" for i in range(11)]  # numeric


def test_messages_and_alpaca(tmp_path):
    msgs = tmp_path / "m.jsonl"
    msgs.write_text(json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                             {"role": "assistant", "content": "A"}]}) + "\n")
    assert [m["role"] for m in load_conversations(msgs)[0]["messages"]] == ["system", "user", "assistant"]
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Do", "input": "this", "output": "Done"}) + "\n")
    conv = load_conversations(alpaca)[0]
    assert conv["messages"][0]["content"] == "Do\n\nthis" and embedding_text(conv) == "Do\n\nthis\nDone"
    aj = tmp_path / "a.json"
    aj.write_text(json.dumps([{"instruction": "Do", "input": "", "output": "Done"}]))
    assert load_conversations(aj, "alpaca")[0]["messages"][0]["content"] == "Do"


def test_truncated_array_keeps_whole_records():
    text = json.dumps([{"a": 1}, {"b": 2}])[:-8]
    assert list(iter_json_array(text, "t")) == [{"a": 1}]


def test_packaged_sharegpt_loads_offline():
    convs = load_conversations(None, "sharegpt_package", on_invalid="skip")
    assert len(convs) > 17000
    assert all(c["messages"][0]["role"] in ("user", "system") for c in convs[:500])
    sample = sample_pool(convs, 50, 3)
    assert sample == sample_pool(convs, 50, 3) and sample != sample_pool(convs, 50, 4)


@pytest.mark.parametrize("content, match", [
    ("[[{\"from\": \"human\", \"value\": \"only a question\"}]]", "no non-empty assistant turn"),
    ("[]", "no usable conversation"),
    ("{not json", "malformed JSON"),
    ("[[{\"from\": \"robot\", \"value\": \"x\"}]]", "unknown role 'robot'"),
    ("{\"a\": 1}", "expected a JSON list"),
])
def test_bad_pools(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        load_conversations(path)
    assert "bad.json" in str(info.value) or match == "no usable conversation"


def test_missing_pool_file_and_oversized_sample(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_conversations(tmp_path / "nope.json")
    (tmp_path / "p.json").write_text(json.dumps([CONV]))
    with pytest.raises(InputError, match="only 1 usable"):
        sample_pool(load_conversations(tmp_path / "p.json"), 5, 0)


def test_hub_sources_through_datasets(tmp_path):
    # the real datasets.load_dataset path; the "json" builder stands in for a hub id offline
    rows = tmp_path / "wizard.jsonl"
    rows.write_text("\n".join(json.dumps({"conversations": CONV, "id": str(i)}) for i in range(5)) + "\n")
    chat = tmp_path / "ultra.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "U"},
                                             {"role": "assistant", "content": "A"}]}) + "\n")
    sources = [{"name": "json", "format": "authors", "limit": 3, "kwargs": {"data_files": str(rows)}},
               {"name": "json", "format": "messages", "kwargs": {"data_files": str(chat)}}]
    convs = load_conversations(None, "hub", sources=sources)
    assert len(convs) == 4 and convs[-1]["messages"][1]["content"] == "A"
    with pytest.raises(InputError, match="needs pool.sources"):
        load_conversations(None, "hub")
