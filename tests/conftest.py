import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=300,
                     help="examples per door in tests/test_fuzz.py (CI keeps the default; raise it for a long run)")


@pytest.fixture
async def engine(tmp_path):
    """A served engine with the default configuration on ``tmp_path/data`` (modules that need another
    configuration define their own ``engine``)."""
    from engine.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(data_dir=tmp_path / "data"))
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/pg_server.py); skipped, with the reason, without one."""
    import pg_server

    why = pg_server.unavailable()
    if why:
        pytest.skip(why)
    server = pg_server.PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.database()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API server for the session (moto's server mode, tests/s3_server.py); skipped, with the
    reason, without moto."""
    import s3_server as s3

    if s3.moto_server_command() is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]'): the object-store tests need it")
    server = s3.S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.close()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket on the session's S3 server: its name."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{len(s3_server.buckets_made)}"
    s3_server.buckets_made.append(name)
    s3_server.make_bucket(name)
    return name
