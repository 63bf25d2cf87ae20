import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=300,
                     help="examples per door in tests/test_fuzz.py (CI keeps the default; raise it for a long run)")
