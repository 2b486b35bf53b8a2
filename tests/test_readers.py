"""Tests of the raw-format registry (mbrec/data/readers): a new format is one file plus one line.

The readers' behaviour on every real format is tested through ``prepare`` in test_prepare.py.
"""

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from mbrec.data import DataPreparationError, prepare
from mbrec.data.__main__ import main as cli_main
from mbrec.data.prepare import INTER_HEADER, ITEM_HEADER
from mbrec.data.readers import FORMATS, RawFormat

# A made-up raw format: one JSON object per line, written as its own reader module (the "one file").
JSONL_READER_SOURCE = textwrap.dedent('''
    """Made-up format: JSON lines {"who": user, "what": item, "kind": behavior, "when": seconds, "cat": category}."""

    import json

    import pandas as pd

    from mbrec.data.errors import DataPreparationError
    from mbrec.data.readers.parse import behavior_column, line_error, vocabulary_mapping
    from mbrec.data.readers.table import LogColumns, items_first_category, log_output

    DEFAULT_FILES = {"log": "events.jsonl"}


    def read_jsonl(files, options):
        path = files["log"]
        vocabulary = options["behaviors"]
        mapping = vocabulary_mapping(vocabulary, {b: b for b in vocabulary})
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                try:
                    rows.append(json.loads(text))
                except ValueError as exc:
                    raise line_error(path, number, f"not JSON: {exc}")
        if not rows:
            raise DataPreparationError(f"{path}: no events")
        table = pd.DataFrame(rows)
        log = LogColumns(len(table), vocabulary)
        log.append(table["who"].to_numpy(), table["what"].to_numpy(),
                   behavior_column(table["kind"], mapping, vocabulary, path, "kind", 1), table["when"].to_numpy())
        items = items_first_category([table.rename(columns={"what": "item_id", "cat": "category"})
                                      [["item_id", "category"]]])
        return log_output(log, path, items)
''')

# taobao's behaviors are [pv, fav, cart, buy]; user 3 before user 12, ties in time keep file order
JSONL_EVENTS = [
    {"who": 12, "what": 7, "kind": "pv", "when": 200, "cat": 1},
    {"who": 3, "what": 5, "kind": "cart", "when": 100, "cat": 2},
    {"who": 3, "what": 6, "kind": "pv", "when": 100, "cat": 2},
    {"who": 3, "what": 7, "kind": "buy", "when": 50, "cat": 9},
    {"who": 12, "what": 5, "kind": "buy", "when": 300, "cat": 2},
]


@pytest.fixture
def jsonl_format(tmp_path, monkeypatch):
    """Add the made-up format exactly as a developer would: one module file, one registry line."""
    module_dir = tmp_path / "plugins"
    module_dir.mkdir()
    (module_dir / "jsonl_events.py").write_text(JSONL_READER_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(module_dir))
    jsonl_events = importlib.import_module("jsonl_events")
    monkeypatch.setitem(FORMATS, "jsonl", RawFormat(jsonl_events.read_jsonl, jsonl_events.DEFAULT_FILES))
    yield "jsonl"
    sys.modules.pop("jsonl_events", None)


def write_events(folder, events):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return folder


def test_registry_names_every_raw_format():
    assert set(FORMATS) == {"tianchi", "ijcai15", "retailrocket", "matrices", "diffurec", "csv", "synthetic"}
    for name, raw_format in FORMATS.items():
        assert raw_format.read.__module__.startswith("mbrec.data.readers."), name
        assert callable(raw_format.read) and isinstance(raw_format.default_files, dict)


def test_new_format_prepares_end_to_end(tmp_path, jsonl_format):
    raw = write_events(tmp_path / "raw", JSONL_EVENTS)
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path / "cache", format=jsonl_format)

    assert folder.name == "taobao-format_jsonl"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "taobao-format_jsonl.inter",
                                                        "taobao-format_jsonl.item"]
    inter = (folder / f"{folder.name}.inter").read_text(encoding="utf-8").splitlines()
    assert inter[0] == INTER_HEADER
    assert inter[1:] == ["3\t7\tbuy\t50", "3\t5\tcart\t100", "3\t6\tpv\t100", "12\t7\tpv\t200", "12\t5\tbuy\t300"]
    item = (folder / f"{folder.name}.item").read_text(encoding="utf-8").splitlines()
    assert item[0] == ITEM_HEADER
    assert item[1:] == ["5\t2", "6\t2", "7\t1"]  # item 7: category of its first line in the file
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "jsonl" and meta["n_rows"] == 5 and meta["n_users"] == 2 and meta["n_items"] == 3
    assert meta["behavior_counts"] == {"pv": 2, "fav": 0, "cart": 1, "buy": 2}
    assert meta["raw_files"] == {"log": str((raw / "events.jsonl").resolve())}
    assert meta["notes"] == {"duplicate_rows": 0}


def test_new_format_is_cached_and_rebuilt_like_the_others(tmp_path, jsonl_format):
    raw = write_events(tmp_path / "raw", JSONL_EVENTS)
    cache = tmp_path / "cache"
    first = prepare("taobao", raw_path=raw, cache_dir=cache, format=jsonl_format)
    built = json.loads((first / "meta.json").read_text())
    assert prepare("taobao", raw_path=raw, cache_dir=cache, format=jsonl_format) == first
    assert json.loads((first / "meta.json").read_text())["created"] == built["created"]  # reused, not rebuilt

    write_events(raw, JSONL_EVENTS[:3])  # new size: a new fingerprint, so the folder is rebuilt
    rebuilt = json.loads((prepare("taobao", raw_path=raw, cache_dir=cache, format=jsonl_format)
                          / "meta.json").read_text())
    assert rebuilt["n_rows"] == 3 and rebuilt["fingerprint"] != built["fingerprint"]


def test_new_format_errors_are_clear_and_leave_no_folder(tmp_path, jsonl_format):
    raw = write_events(tmp_path / "raw", JSONL_EVENTS)
    with open(raw / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"who": 1, "what": 2, "kind": "teleport", "when": 3, "cat": 4}\n')
    with pytest.raises(DataPreparationError, match="unknown behavior 'teleport'"):
        prepare("taobao", raw_path=raw, cache_dir=tmp_path / "cache", format=jsonl_format)
    assert not (tmp_path / "cache" / "taobao-format_jsonl").exists()
    with pytest.raises(DataPreparationError, match="events.jsonl"):  # missing file: says what is expected
        prepare("taobao", raw_path=tmp_path / "empty_dir_missing", cache_dir=tmp_path / "cache",
                format=jsonl_format)


def test_new_format_is_offered_by_the_command_line(tmp_path, jsonl_format, capsys):
    raw = write_events(tmp_path / "raw", JSONL_EVENTS)
    cli_main(["prepare", "taobao", "--raw", str(raw), "--cache-dir", str(tmp_path / "cache"), "--format", "jsonl"])
    assert (tmp_path / "cache" / "taobao-format_jsonl" / "taobao-format_jsonl.inter").is_file()


def test_preparing_data_imports_neither_torch_nor_recbole(tmp_path):
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,behavior,timestamp\n1,2,pv,10\n1,3,buy,20\n")
    script = (f"import sys; from mbrec.data.prepare import prepare; "
              f"prepare('taobao', raw_path={str(raw)!r}, cache_dir={str(tmp_path / 'cache')!r}, format='csv'); "
              f"print(sorted(m for m in ('torch', 'recbole') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
