"""A lake root is created on purpose: relative and missing roots are refused, never silently made.

A mistyped ``ECOM_LAKE_ROOT`` used to start a second, empty lake that ingestion filled and training
then found empty; a relative one resolved against each task's working directory.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from ecom_ml import cli
from ecom_ml.lake import MARKER, RAW, Lake, LakeError

DAY = date(2024, 1, 5)
TABLE = {"orders": pa.table({"order_id": pa.array([1, 2, 3], pa.int64())})}


@pytest.mark.parametrize("root", ["relative_lake", "lake/sub", "file://relative_lake/x", "~/lake"])
def test_a_relative_root_is_refused_with_one_line(root: str) -> None:
    with pytest.raises(LakeError, match=r"lake root '.*' is a relative path.*ECOM_LAKE_ROOT"):
        Lake(root)


def test_absolute_paths_and_uris_are_accepted(tmp_path) -> None:
    assert Lake(str(tmp_path)).root == str(tmp_path)
    assert Lake(tmp_path.as_uri()).root == tmp_path.as_uri()
    assert Lake("s3://bucket/lake/").root == "s3://bucket/lake"


def test_a_write_into_a_missing_root_is_refused_and_creates_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ECOM_LAKE_CREATE", raising=False)
    missing = tmp_path / "does" / "not" / "exist" / "yet" / "lake"
    lake = Lake(missing.as_uri())
    with pytest.raises(LakeError, match=r"lake root file://.*/yet/lake does not exist; check ECOM_LAKE_ROOT.*"
                                        r"`ecom-ml lake init file://.*` \(or set ECOM_LAKE_CREATE=1\)"):
        lake.write(RAW, "orders", DAY, TABLE)
    assert not (tmp_path / "does").exists(), "a refused write leaves no folder behind"
    with pytest.raises(LakeError, match="does not exist"):
        lake.write_text(RAW, "orders", DAY, "report.json", "{}")


def test_ingest_extract_into_a_mistyped_root_fails_naming_it(orders_db, tmp_path, monkeypatch) -> None:
    """The real extract task: the mistyped root is the task's failure reason, no empty lake appears."""
    from ecom_ml.generator import GeneratorConfig, generate
    from ecom_ml.ingest.tasks import IngestConfig, extract_to_raw

    monkeypatch.delenv("ECOM_LAKE_CREATE", raising=False)
    generate(orders_db, GeneratorConfig(start=DAY, days=1, orders_per_day=50, seed=3), progress=False)
    typo = (tmp_path / "lakee").as_uri()
    begin = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
    with pytest.raises(LakeError, match=r"lake root .*/lakee does not exist"):
        extract_to_raw(IngestConfig(lake_root=typo, orders_url=orders_db), begin, begin + timedelta(days=1))
    assert not (tmp_path / "lakee").exists()


def test_ecom_lake_create_lets_the_first_write_create_the_root_and_says_so(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("ECOM_LAKE_CREATE", "1")
    lake = Lake((tmp_path / "new" / "lake").as_uri())
    with caplog.at_level(logging.WARNING, logger="ecom_ml.lake"):
        lake.write(RAW, "orders", DAY, TABLE)
    assert lake.read(RAW, "orders", DAY)["orders"].num_rows == 3
    assert (tmp_path / "new" / "lake" / MARKER).exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("created a new, empty lake at file://") for m in messages), messages
    assert any("raw/orders: first partition in the lake at" in m for m in messages), messages


def test_the_first_write_into_an_initialised_lake_says_so_once(tmp_path, caplog) -> None:
    lake = Lake((tmp_path / "lake").as_uri())
    assert lake.init() is True and lake.init() is False
    with caplog.at_level(logging.WARNING, logger="ecom_ml.lake"):
        lake.write(RAW, "orders", DAY, TABLE)
        lake.write(RAW, "orders", date(2024, 1, 6), TABLE)
    firsts = [r for r in caplog.records if "first partition" in r.getMessage()]
    assert len(firsts) == 1


def test_cli_lake_init_and_status(tmp_path, capsys) -> None:
    root = (tmp_path / "lake").as_uri()
    assert cli.main(["lake", "status", root]) == 3
    assert "does not exist (create it with `ecom-ml lake init" in capsys.readouterr().out
    assert cli.main(["lake", "init", root]) == 0
    assert capsys.readouterr().out.strip() == f"lake: created a new, empty lake at {root}"
    assert cli.main(["lake", "init", root]) == 0
    assert capsys.readouterr().out.strip() == f"lake: already exists: {root}"
    assert cli.main(["lake", "status", root]) == 0
    assert cli.main(["lake", "init", "relative_lake"]) == 2
    assert "ecom-ml: error: lake root 'relative_lake' is a relative path" in capsys.readouterr().err


def test_the_installed_command_refuses_a_relative_root_in_one_line(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "ecom_ml.cli", "lake", "init", "relative_lake"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], "one line, no traceback"
    assert not (tmp_path / "relative_lake").exists()


def test_setup_creates_the_default_lake_but_only_checks_a_named_one(tmp_path, monkeypatch) -> None:
    from ecom_ml import settings as settings_mod

    monkeypatch.delenv("ECOM_LAKE_ROOT", raising=False)
    cfg = settings_mod.load()
    default = Lake(cfg.lake_root)
    assert cli._setup_lake(cfg).startswith(default.root)
    assert default.exists(), "setup leaves the default lake ready for the DAGs and `make demo`"
    named = (tmp_path / "typo").as_uri()
    monkeypatch.setenv("ECOM_LAKE_ROOT", named)
    assert "does NOT exist" in cli._setup_lake(settings_mod.load())
    assert not (tmp_path / "typo").exists(), "setup never creates a lake the user named"
    monkeypatch.setenv("ECOM_LAKE_ROOT", default.root)  # as `eval "$(ecom-ml env)"` exports it
    assert cli._setup_lake(settings_mod.load()).startswith(default.root + " (")
