"""Lake partitions: atomic replacement, byte-identical re-writes, and a writer killed half-way."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from ecom_ml.lake import MANIFEST, QUARANTINE, RAW, VALIDATED, Lake

DAY = date(2024, 1, 5)


def _table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({"order_id": pa.array(range(offset, offset + n), pa.int64()), "x": pa.array([1.5] * n)})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_write_read_and_identical_rewrite(tmp_path):
    lake = Lake(tmp_path.as_uri())
    first = lake.write(RAW, "orders", DAY, {"orders": _table(100)})
    files = _files(tmp_path)
    again = lake.write(RAW, "orders", DAY, {"orders": _table(100)})
    assert again.version == first.version
    assert _files(tmp_path) == files, "re-writing identical data must give byte-identical files"
    assert lake.read(RAW, "orders", DAY)["orders"].equals(_table(100))
    assert lake.days(RAW, "orders") == [DAY]


def test_rewrite_replaces_exactly_that_day(tmp_path):
    lake = Lake(tmp_path.as_uri())
    other = date(2024, 1, 6)
    lake.write(RAW, "orders", DAY, {"orders": _table(10)})
    lake.write(RAW, "orders", other, {"orders": _table(20)})
    other_files = _files(tmp_path / "raw" / "orders" / "dt=2024-01-06")
    lake.write(RAW, "orders", DAY, {"orders": _table(5, offset=1000)})
    assert lake.read(RAW, "orders", DAY)["orders"].num_rows == 5
    assert _files(tmp_path / "raw" / "orders" / "dt=2024-01-06") == other_files
    versions = [p.name for p in (tmp_path / "raw" / "orders" / "dt=2024-01-05").iterdir() if p.name.startswith("v-")]
    assert len(versions) == 1, "superseded versions are removed"


def test_copy_between_zones_and_remove(tmp_path):
    lake = Lake(tmp_path.as_uri())
    written = lake.write(RAW, "orders", DAY, {"orders": _table(7)}, extra={"a": 1})
    copied = lake.copy(RAW, VALIDATED, "orders", DAY, extra={"quality": "pass"})
    assert copied.version == written.version and copied.extra == {"a": 1, "quality": "pass"}
    assert lake.read(VALIDATED, "orders", DAY)["orders"].num_rows == 7
    assert lake.remove(VALIDATED, "orders", DAY)
    assert lake.manifest(VALIDATED, "orders", DAY) is None
    assert not lake.remove(QUARANTINE, "orders", DAY)
    with pytest.raises(FileNotFoundError, match="no validated/orders partition for 2024-01-05"):
        lake.read(VALIDATED, "orders", DAY)


def test_a_writer_killed_mid_write_leaves_the_previous_version_visible(tmp_path):
    lake = Lake(tmp_path.as_uri())
    lake.write(RAW, "orders", DAY, {"orders": _table(50)})
    marker = tmp_path / "data-written"
    # The child writes a new, large version and is held just before its manifest commit (the only
    # moment at which a kill can matter); then we SIGKILL it, like a killed Airflow task.
    child = textwrap.dedent(
        f"""
        import time, pyarrow as pa
        from pathlib import Path
        from ecom_ml import lake as lake_mod
        real = lake_mod.Manifest.to_json
        def held(self):
            Path({str(marker)!r}).write_text("x")
            time.sleep(120)
            return real(self)
        lake_mod.Manifest.to_json = held
        table = pa.table({{"order_id": pa.array(range(2_000_000), pa.int64()), "x": pa.array([2.5] * 2_000_000)}})
        lake_mod.Lake({tmp_path.as_uri()!r}).write("raw", "orders", lake_mod.date(2024, 1, 5), {{"orders": table}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "the writer died before it was killed"
        assert time.monotonic() < deadline, "the writer never reached its commit point"
        time.sleep(0.05)
    part = tmp_path / "raw" / "orders" / "dt=2024-01-05"
    assert len([p for p in part.iterdir() if p.name.startswith("v-")]) == 2, "new data files were written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    visible = lake.read(RAW, "orders", DAY)["orders"]
    assert visible.equals(_table(50)), "readers must still see the previous, complete version"
    # The next successful write cleans up what the killed writer left.
    lake.write(RAW, "orders", DAY, {"orders": _table(3)})
    assert len([p for p in part.iterdir() if p.name.startswith("v-")]) == 1
    assert (part / MANIFEST).exists()


def _held_writer(root: str, marker: Path) -> subprocess.Popen:
    """A child that writes a fresh two-table partition and is held inside its first data-file write."""
    child = textwrap.dedent(
        f"""
        import time, pyarrow as pa
        from pathlib import Path
        from ecom_ml import lake as lake_mod, storage
        cls = type(storage.path({root!r}))
        real = cls.write_bytes
        def held(self, data):
            written = real(self, data)
            if self.name.startswith(("customers", ".customers")):
                Path({str(marker)!r}).write_text(self.path)
                time.sleep(120)
            return written
        cls.write_bytes = held
        n = 200_000
        tables = {{"customers": pa.table({{"customer_id": pa.array(range(n), pa.int64())}}),
                   "orders": pa.table({{"order_id": pa.array(range(n), pa.int64())}})}}
        lake_mod.Lake({root!r}).write("raw", "orders", lake_mod.date(2024, 1, 5), tables)
        """
    )
    return subprocess.Popen([sys.executable, "-c", child])


def test_a_killed_write_leaves_no_temporary_in_a_version_folder_and_the_rerun_cleans_up(tmp_path):
    lake = Lake(tmp_path.as_uri())
    marker = tmp_path / "held"
    proc = _held_writer(lake.root, marker)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "the writer died before it was killed"
        assert time.monotonic() < deadline, "the writer never reached its data-file write"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = tmp_path / "raw" / "orders" / "dt=2024-01-05"
    temporary = Path(marker.read_text())
    assert temporary.exists() and temporary.stat().st_size > 0, "the killed writer left its temporary"
    in_versions = [p for v in part.glob("v-*") for p in v.iterdir() if ".tmp-" in p.name or p == temporary]
    assert in_versions == [], f"temporaries must live outside committed version folders: {in_versions}"
    n = 200_000
    manifest = lake.write(RAW, "orders", DAY, {"customers": pa.table({"customer_id": pa.array(range(n), pa.int64())}),
                                               "orders": pa.table({"order_id": pa.array(range(n), pa.int64())})})
    assert sorted(p.name for p in part.iterdir()) == [MANIFEST, manifest.version]
    assert sorted(p.name for p in (part / manifest.version).iterdir()) == ["customers.parquet", "orders.parquet"]


def test_the_rerun_removes_a_stray_temporary_an_older_writer_left_inside_the_current_version(tmp_path):
    """Lakes written before staging existed can hold `.x.parquet.tmp-*` inside the current version."""
    lake = Lake(tmp_path.as_uri())
    manifest = lake.write(RAW, "orders", DAY, {"orders": _table(10)})
    stray = tmp_path / "raw" / "orders" / "dt=2024-01-05" / manifest.version / ".customers.parquet.tmp-0123abcd"
    stray.write_bytes(b"x" * 2048)
    assert lake.write(RAW, "orders", DAY, {"orders": _table(10)}).version == manifest.version
    assert not stray.exists()
    assert lake.read(RAW, "orders", DAY)["orders"].equals(_table(10))
