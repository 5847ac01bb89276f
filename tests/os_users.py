"""A throwaway OS account for the tests of what another local user can do (issue 12, item 6).

Creating an account needs root (``useradd``); acting as it uses ``runuser``. Not being root is a
failure, not a skip: the property under test is exactly what only a second account can show.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def other_user() -> Iterator[str]:
    """A fresh OS account, deleted afterwards: the hostile local user of the issue."""
    if os.geteuid() != 0:
        pytest.fail("this test creates a throwaway OS user with useradd and runs commands as it with runuser: "
                    "run it as root (the CI container does)")
    name = f"ecomx{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def run_as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user``, with a bare environment (nothing of ours leaks into it)."""
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    assert runuser, "runuser (util-linux) is needed to act as another OS user"
    return subprocess.run([runuser, "-u", user, "--", *argv], capture_output=True, text=True, timeout=60,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
