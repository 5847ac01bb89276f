"""Two writers of one partition, and readers beside them, as separate processes on real storage.

Nothing in the DAGs stops two runs of one day (``max_active_runs=3``, the ``day`` param), so two
processes writing the same partition with different content is an ordinary event. Each writer must
succeed, each reader must see one complete version (never an error, never a mix), and the
partition must end with exactly one version and no temporaries. Run on ``file://`` and on ``s3://``
against a moto S3 server started here (the real boto/s3fs client stack, with conditional writes).
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Iterator
from datetime import date

import pyarrow as pa
import pytest

from ecom_ml import storage
from ecom_ml.lake import MANIFEST, RAW, STAGING, Lake

DAY = date(2024, 1, 5)
ROWS = 20_000


def _table(writer: int) -> dict[str, pa.Table]:
    """Each writer's own content: two tables whose values name the writer, so a mix is visible."""
    return {
        "orders": pa.table({"order_id": pa.array(range(ROWS), pa.int64()), "w": pa.array([writer] * ROWS, pa.int64())}),
        "customers": pa.table({"customer_id": pa.array(range(ROWS // 4), pa.int64()),
                               "w": pa.array([writer] * (ROWS // 4), pa.int64())}),
    }


def _writer(root: str, writer: int, writes: int, start: float, out: multiprocessing.Queue) -> None:
    failures: list[str] = []
    lake = Lake(root)
    while time.time() < start:
        time.sleep(0.001)
    for i in range(writes):
        try:
            tables = _table(writer)
            tables["orders"] = tables["orders"].append_column("i", pa.array([i] * ROWS, pa.int64()))
            lake.write(RAW, "orders", DAY, tables)
        except Exception as exc:  # noqa: BLE001 - counted and reported by the test
            failures.append(f"{type(exc).__name__}: {exc}")
    _report_and_leave(out, ("write", writes, failures))


def _reader(root: str, done, out: multiprocessing.Queue) -> None:  # noqa: ANN001 - an Event
    failures: list[str] = []
    reads = 0
    lake = Lake(root)
    while not done.is_set():
        try:
            got = lake.read(RAW, "orders", DAY)
            writers = {*got["orders"].column("w").to_pylist(), *got["customers"].column("w").to_pylist()}
            if len(writers) != 1 or got["orders"].num_rows != ROWS:
                failures.append(f"mixed or partial version: writers {writers}, {got['orders'].num_rows} rows")
        except Exception as exc:  # noqa: BLE001 - counted and reported by the test
            failures.append(f"{type(exc).__name__}: {exc}")
        reads += 1
    _report_and_leave(out, ("read", reads, failures))


def _report_and_leave(out: multiprocessing.Queue, result: tuple) -> None:
    """Hand the result over, then exit as the trainer does (``ecom_ml.process.leave``): pyarrow's
    thread pools have aborted interpreter teardown of these children once in CI (SIGABRT after the
    work was done and reported), which says nothing about the lake."""
    from ecom_ml.process import leave

    out.put(result)
    out.close()
    out.join_thread()
    leave(0)


def _race(root: str, writes: int, readers: int = 2) -> dict[str, tuple[int, list[str]]]:
    """Two writer processes and ``readers`` reader processes on one partition; totals per kind."""
    ctx = multiprocessing.get_context("spawn")  # no fork of the moto server's threads
    out: multiprocessing.Queue = ctx.Queue()
    done = ctx.Event()
    Lake(root).write(RAW, "orders", DAY, _table(0))
    start = time.time() + 3.0  # every process up and imported before the first write
    writers = [ctx.Process(target=_writer, args=(root, w, writes, start, out)) for w in (1, 2)]
    reader_procs = [ctx.Process(target=_reader, args=(root, done, out)) for _ in range(readers)]
    for proc in [*writers, *reader_procs]:
        proc.start()
    totals: dict[str, tuple[int, list[str]]] = {"write": (0, []), "read": (0, [])}

    def collect() -> None:
        kind, count, failures = out.get(timeout=600)
        totals[kind] = (totals[kind][0] + count, totals[kind][1] + failures)

    for _ in writers:  # only writers report before `done`
        collect()
    done.set()
    for _ in reader_procs:
        collect()
    for proc in [*writers, *reader_procs]:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return totals


def _assert_clean(lake: Lake) -> None:
    part = lake.partition(RAW, "orders", DAY)
    names = sorted(child.name for child in part.iterdir())
    versions = [n for n in names if n.startswith("v-")]
    assert len(versions) == 1, f"exactly one version left, found {names}"
    assert STAGING not in names and not any(".tmp-" in n for n in names), names
    manifest = lake.manifest(RAW, "orders", DAY)
    assert manifest is not None and manifest.version == versions[0]
    assert sorted(c.name for c in (part / manifest.version).iterdir()) == sorted(manifest.files.values())
    got = lake.read(RAW, "orders", DAY)
    assert set(got["orders"].column("w").to_pylist()) in ({1}, {2})
    assert (part / MANIFEST).exists()


def _report(totals: dict[str, tuple[int, list[str]]]) -> str:
    return "; ".join(f"{kind}: {len(f)} of {n} failed {f[:3]}" for kind, (n, f) in totals.items())


def test_two_writers_and_readers_on_local_disk(tmp_path) -> None:
    lake = Lake(tmp_path.joinpath("lake").as_uri())
    lake.init()
    totals = _race(lake.root, writes=40)
    assert not totals["write"][1] and not totals["read"][1], _report(totals)
    assert totals["read"][0] > 20, f"the readers read too little to show anything: {_report(totals)}"
    _assert_clean(lake)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_lake(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on a moto S3 server on a free local port; the lake client finds it via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        import boto3
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients; each test has its own server

        boto3.client("s3").create_bucket(Bucket="ecom-lake")
        yield "s3://ecom-lake/lake"
    finally:
        server.stop()


def test_the_s3_lake_really_is_the_moto_server(s3_lake: str) -> None:
    """The lake's storage layer honours AWS_ENDPOINT_URL: what it writes, boto3 lists on the server."""
    import boto3

    Lake(s3_lake).init()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ecom-lake").get("Contents", [])]
    assert keys == ["lake/_lake.json"]
    assert storage.path(s3_lake).fs.__class__.__name__ == "S3FileSystem"


def test_two_writers_and_readers_on_s3(s3_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOM_LAKE_LOCK_TTL_S", "20")
    lake = Lake(s3_lake)
    lake.init()
    totals = _race(s3_lake, writes=12)
    assert not totals["write"][1] and not totals["read"][1], _report(totals)
    assert totals["read"][0] > 5, f"the readers read too little to show anything: {_report(totals)}"
    _assert_clean(lake)


def test_an_expired_s3_lease_of_a_killed_writer_is_taken_over(s3_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that died holding the lease blocks the partition for at most the lease's TTL."""
    import json

    import boto3

    Lake(s3_lake).init()
    stale = {"host": "gone", "pid": 1, "token": "x", "acquired_at": time.time() - 100, "expires_at": time.time() - 1}
    boto3.client("s3").put_object(Bucket="ecom-lake", Key="lake/_locks/raw/orders/dt=2024-01-05.lock",
                                  Body=json.dumps(stale).encode())
    monkeypatch.setenv("ECOM_LAKE_LOCK_TIMEOUT_S", "10")
    Lake(s3_lake).write(RAW, "orders", DAY, _table(3))
    assert set(Lake(s3_lake).read(RAW, "orders", DAY)["orders"].column("w").to_pylist()) == {3}
    left = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ecom-lake", Prefix="lake/_locks/").get("Contents", [])]
    assert left == [], "the writer releases its lease"


def test_a_live_lock_makes_the_second_writer_wait_then_fail_with_one_line(tmp_path, monkeypatch) -> None:
    """A writer that cannot get the lock in ECOM_LAKE_LOCK_TIMEOUT_S says who holds it and where."""
    from ecom_ml.lake_lock import LakeLockError

    lake = Lake(tmp_path.as_uri())
    monkeypatch.setenv("ECOM_LAKE_LOCK_TIMEOUT_S", "0.5")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(lake.root, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LakeLockError, match=r"raw/orders 2024-01-05 under .* is being written by .* pid \d+"):
            lake.write(RAW, "orders", DAY, _table(1))
    finally:
        holder.kill()
        holder.join()
    lake.write(RAW, "orders", DAY, _table(1))  # the dead holder's flock went with it


def _hold_lock(root: str, ready) -> None:  # noqa: ANN001 - a multiprocessing Event
    lake = Lake(root)
    with lake._lock(RAW, "orders", DAY):
        ready.set()
        time.sleep(120)


def test_s3_lease_is_held_against_a_second_writer(s3_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecom_ml.lake_lock import LakeLockError

    lake = Lake(s3_lake)
    lake.init()
    monkeypatch.setenv("ECOM_LAKE_LOCK_TIMEOUT_S", "1")
    with lake._lock(RAW, "orders", DAY):
        with pytest.raises(LakeLockError, match=r"is being written by .* pid \d+ .*lock s3://ecom-lake/lake/_locks/"):
            lake.write(RAW, "orders", DAY, _table(1))
    lake.write(RAW, "orders", DAY, _table(1))



def test_a_writer_that_lost_its_s3_lease_does_not_commit_or_delete_the_new_holders_lock(s3_lake: str) -> None:
    """A holder that stalled past its lease (another writer took the lock over) must not publish."""
    import json

    import boto3

    from ecom_ml.lake_lock import LakeLockError, partition_lock

    s3 = boto3.client("s3")
    key = "lake/_locks/raw/orders/dt=2024-01-05.lock"
    with pytest.raises(LakeLockError, match=r"lost the partition lock s3://ecom-lake/lake/_locks/.* to another writer"):
        with partition_lock(storage.path(s3_lake), "raw/orders/dt=2024-01-05", "raw/orders 2024-01-05") as lock:
            successor = {"host": "other", "pid": 2, "token": "y", "acquired_at": time.time(),
                         "expires_at": time.time() + 60}
            s3.put_object(Bucket="ecom-lake", Key=key, Body=json.dumps(successor).encode())  # a takeover
            lock.confirm()
    held = json.loads(s3.get_object(Bucket="ecom-lake", Key=key)["Body"].read())
    assert held["host"] == "other", "releasing a lost lease leaves the successor's lock alone"


def test_a_malformed_lock_timeout_is_one_line(tmp_path, monkeypatch) -> None:
    from ecom_ml.lake_lock import LakeLockError

    monkeypatch.setenv("ECOM_LAKE_LOCK_TIMEOUT_S", "ten")
    with pytest.raises(LakeLockError, match=r"^ECOM_LAKE_LOCK_TIMEOUT_S='ten' is not a number of seconds$"):
        Lake(tmp_path.as_uri()).write(RAW, "orders", DAY, _table(1))
