"""The chart's redis.conf on a real redis-server: a full Redis refuses a load and says what
to raise, the live table keeps serving, and the loader's snapshot runs once a table is live.

The rendered ConfigMap's redis.conf runs as the chart's container runs it, with the test's
loopback port on the command line (redis-server lets flags after the file win), and its
two paths, `dir /data` (redis-server enters it as it reads the file) and the `include` of
the password file, pointed into the test's directory instead of the container's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kindling.embeddings.cli import main as embeddings
from kindling.embeddings.redis_server import RedisServer, redis_server_path
from tests.charts.render import Helm, by_kind
from tests.embeddings.helpers import make_vectors, write_gensim

# helm and redis-server run as real processes.
pytestmark = pytest.mark.integration

LIMIT = "16Mi"  # the container's memory limit: maxmemory is 3/4 of it, 12 MiB


@pytest.fixture
def chart_redis(helm: Helm, tmp_path: Path) -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.fail("redis-server is not installed (make redis-server)", pytrace=False)
    objects = helm.template(
        sets=("redis.enabled=true", f"redis.resources.limits.memory={LIMIT}",
              "embeddings.externalTables={demo300,demo50}"),
    )  # fmt: skip
    (config,) = [c for c in by_kind(objects, "ConfigMap") if "redis.conf" in c["data"]]
    auth = tmp_path / "auth.conf"
    auth.write_text("")
    conf = tmp_path / "redis.conf"
    data = tmp_path / "data"
    # The two container paths, pointed into the test's directory: the directives are
    # found in the rendered file, so the test follows wherever the chart puts them.
    paths = {"include": auth, "dir": data}
    lines = config["data"]["redis.conf"].splitlines()
    lines = [
        f"{w} {paths[w]}" if (w := line.partition(" ")[0]) in paths else line for line in lines
    ]
    assert sum(line.partition(" ")[0] in paths for line in lines) == 2
    conf.write_text("\n".join(lines) + "\n")
    with RedisServer(data, config_file=conf) as server:
        yield server


def load(server: RedisServer, table: str, words: int, tmp_path: Path, *extra: str) -> int:
    names = [f"w{i}" for i in range(words)]
    vectors = make_vectors(names, 300)
    path = write_gensim(tmp_path / f"{table}-{words}.bin", names, vectors, binary=True)
    args = ["load", "--table", table, "--format", "word2vec-bin", str(path)]
    return embeddings([*args, "--redis", server.url, "--grace", "0", "--quiet", *extra])


def test_the_charts_redis_refuses_a_load_it_cannot_hold(
    chart_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis(port=chart_redis.port)
    assert client.config_get("maxmemory")["maxmemory"] == str(12 * 2**20)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("save")["save"] == ""  # no snapshot forks mid-load
    assert load(chart_redis, "small", 1000, tmp_path) == 0  # 1.2 MB of vectors
    capsys.readouterr()
    # 20,000 x 300 float32 is 24 MB: the write is refused, not the process killed.
    assert load(chart_redis, "small", 20_000, tmp_path) == 1
    err = capsys.readouterr().err
    assert "maxmemory" in err and "redis.resources.limits.memory" in err, err
    assert client.ping()
    # The live version is the first load's, whole.
    assert embeddings(["info", "--table", "small", "--redis", chart_redis.url]) == 0
    assert '"count":1000' in capsys.readouterr().out.replace(" ", "")


def test_the_loader_snapshots_once_its_table_is_live(
    chart_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis(port=chart_redis.port)
    assert load(chart_redis, "saved", 100, tmp_path, "--snapshot") == 0
    assert "snapshot started" in capsys.readouterr().out
    # BGSAVE forks; the server's own persistence info says when it has finished. WAIT for a
    # replica there is none of blocks on the server for 10 ms: the poll's pace, no bound.
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        client.execute_command("WAIT", 1, 10)
    assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
    assert (tmp_path / "data" / "dump.rdb").stat().st_size > 0
