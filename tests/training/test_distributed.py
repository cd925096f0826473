"""torchrun with 2 processes (DDP, gloo) gives the same model as one process, within tolerance."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from nextbest.cli.server import free_port
from nextbest.config import TrainConfig
from nextbest.training import registry
from nextbest.training.models import from_checkpoint
from nextbest.training.pipeline import prepare, train_model
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # two torchrun launches


def test_two_process_ddp_matches_single_process(feast_bank, tmp_path):
    # No dropout, so both runs see exactly the same updates; a few epochs, no early stop. Two
    # networks, as the shipped churn config trains an ensemble: each is trained under DDP.
    cfg = TrainConfig(hidden=[32, 16], dropout=0.0, max_epochs=3, patience=10, batch_size=256, baselines=False,
                      seed=3, ensemble=2)
    config = tmp_path / "churn.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "nextbest.training.distributed", "churn", "--workdir", str(feast_bank.root), "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert ddp["world_size"] == 2

    single = train_model(feast_bank, "churn", cfg, prepared=prepare(feast_bank, "churn", cfg))
    m_ddp, _ = from_checkpoint(registry.fetch_version(feast_bank, "churn", ddp["version"]).local_dir)
    m_one, _ = from_checkpoint(registry.fetch_version(feast_bank, "churn", single.version).local_dir)
    assert len(m_ddp.members) == len(m_one.members) == 2
    assert m_ddp.state_dict().keys() == m_one.state_dict().keys()
    for (name, a), b in zip(m_ddp.state_dict().items(), m_one.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3, msg=f"parameter {name} differs")
    assert abs(ddp["metrics"]["test_roc_auc"] - single.metrics["test_roc_auc"]) < 0.01
