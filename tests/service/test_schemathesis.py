"""Schemathesis against the real server's OpenAPI schema: no generated request may get a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import copy_workdir, served

pytestmark = pytest.mark.slow
KEY = "schemathesis-key"


def test_no_server_errors_on_any_generated_request(quickstart_workdir, tmp_path):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    st = Path(sys.executable).with_name("schemathesis")
    with served(wd, env={"NEXTBEST_API_KEY": KEY}) as (base, _):
        proc = subprocess.run(
            [str(st), "run", f"{base}/docs.json", "--checks", "not_a_server_error", "--max-examples", "60",
             "--seed", "7", "--generation-deterministic", "-H", f"x-api-key: {KEY}", "--request-timeout", "20"],
            capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    (wd / "schemathesis.log").write_text(out)
    assert proc.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and generated[1] == generated[2] and int(generated[1]) >= 200, out[-3000:]
