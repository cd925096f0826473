"""Schemathesis against the real server's OpenAPI schema, every check: no 5xx, every answer declared
and shaped as declared, schema-valid requests accepted and schema-invalid ones refused, the API key
enforced, over thousands of generated requests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.servers import copy_workdir, served

pytestmark = pytest.mark.slow
KEY = "schemathesis-key"


def test_every_schemathesis_check_passes_on_thousands_of_generated_requests(quickstart_workdir, tmp_path):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    st = Path(sys.executable).with_name("schemathesis")
    with served(wd, env={"NEXTBEST_API_KEY": KEY}) as (base, _):
        proc = subprocess.run(
            [str(st), "run", f"{base}/docs.json", "--checks", "all", "--max-examples", "1000",
             "--seed", "7", "--generation-deterministic", "-H", f"x-api-key: {KEY}", "--request-timeout", "20"],
            capture_output=True, text=True, timeout=800, cwd=REPO_ROOT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"})
    out = proc.stdout + proc.stderr
    (wd / "schemathesis.log").write_text(out)
    assert proc.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and generated[1] == generated[2] and int(generated[1]) >= 2000, out[-3000:]
