"""Every test file's name is unique across tests/: pytest imports them by basename (no packages),
so two files of one name stop the whole run at collection (it happened: tests/unit and
tests/integration both had test_retrieval_fixed_capacity.py)."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_name_is_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1]
