"""The model artifact: weights.npz beside weights.pt, the torch-free scorer, and serving without torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nextbest.artifact import (NUMPY_WEIGHTS_FILE, WEIGHTS_FILE, ModelMeta, NumpyWeightsMissing, Preprocessor,
                               load_scorer)
from nextbest.training.models import build_model, predict_proba, save_checkpoint

PRODUCTS = ["a", "b", "c"]


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.lognormal(3, 1, n), "held_a": rng.integers(0, 2, n), "held_b": 0,
                         "seg": rng.choice(["u", "v", "w"], n), "tier": rng.choice(["gold", "basic"], n)})


def _model(encoding="piecewise", members=1, seed=0):
    """An untrained model with random weights (the arithmetic is what is under test, not the fit)."""
    torch.manual_seed(seed)
    df = _frame()
    pre = Preprocessor.fit(df, ["x", "held_a", "held_b"], ["seg", "tier"], encoding, bins=4)
    meta = ModelMeta(task="nbp", feature_service="test_v1", preprocessor=pre, outputs=PRODUCTS, hidden=[16, 8],
                     embedding_dim=3, dropout=0.2, temperature=1.4, members=members)
    return build_model(meta).eval(), meta, df


@pytest.mark.parametrize("encoding, members", [("standard", 1), ("piecewise", 1), ("piecewise", 3)])
def test_the_numpy_weights_are_the_torch_weights_and_score_alike(tmp_path, encoding, members):
    model, meta, df = _model(encoding, members)
    save_checkpoint(tmp_path, model, meta)
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    with np.load(tmp_path / NUMPY_WEIGHTS_FILE, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(state)
        for name, tensor in state.items():
            np.testing.assert_array_equal(arrays[name], tensor.numpy())
    scorer, loaded = load_scorer(tmp_path)
    assert loaded == meta
    np.testing.assert_allclose(scorer.predict_proba(df), predict_proba(model, meta, df), rtol=1e-5, atol=1e-7)
    row = {**df.iloc[5].to_dict(), "x": None, "seg": "never_seen"}
    np.testing.assert_allclose(scorer.predict_row(row), predict_proba(model, meta, pd.DataFrame([row]))[0],
                               rtol=1e-5, atol=1e-7)


def test_weights_that_disagree_with_model_json_are_refused(tmp_path):
    model, meta, _ = _model()
    save_checkpoint(tmp_path, model, meta)
    arrays = dict(np.load(tmp_path / NUMPY_WEIGHTS_FILE, allow_pickle=False))

    def refused(state, match, change=None):
        np.savez(tmp_path / NUMPY_WEIGHTS_FILE, **state)
        if change:
            (tmp_path / "model.json").write_text(json.dumps({**json.loads(meta.to_json()), **change}))
        with pytest.raises(ValueError, match=match):
            load_scorer(tmp_path)
        (tmp_path / "model.json").write_text(meta.to_json())

    refused({**arrays, "mlp.9.scale": arrays["mlp.0.bias"]}, "unexpected tensor 'mlp.9.scale'")
    refused({k: v for k, v in arrays.items() if k != "mlp.3.bias"}, "needs a weight and a bias")
    refused({k: v for k, v in arrays.items() if k != "embeddings.1.weight"}, r"embeddings \[0\] for 2 categorical")
    refused({**arrays, "embeddings.0.weight": arrays["embeddings.0.weight"][:-1]}, "embedding of 'seg' has shape")
    refused(arrays, r"layer widths \[16, 8, 3\], model.json says hidden \[16, 4\]", {"hidden": [16, 4]})
    refused(arrays, "embedding of 'seg'", {"embedding_dim": 2})
    refused({f"members.0.{k}": v for k, v in arrays.items()} | {f"members.2.{k}": v for k, v in arrays.items()},
            r"networks numbered \[0, 2\]")


def test_object_arrays_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    model, meta, _ = _model()
    save_checkpoint(tmp_path, model, meta)
    np.savez(tmp_path / NUMPY_WEIGHTS_FILE, **{"mlp.0.weight": np.array([Evil()], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        load_scorer(tmp_path)


def test_a_checkpoint_without_numpy_weights_says_so_and_serving_loads_it_through_torch(tmp_path):
    from nextbest.serving.models import load_checkpoint

    model, meta, df = _model(members=2)
    save_checkpoint(tmp_path, model, meta)
    (tmp_path / NUMPY_WEIGHTS_FILE).unlink()  # as checkpoints saved before the numpy weights are
    with pytest.raises(NumpyWeightsMissing, match="no weights.npz beside weights.pt"):
        load_scorer(tmp_path)
    scorer, loaded = load_checkpoint(tmp_path)
    assert loaded == meta and not (tmp_path / NUMPY_WEIGHTS_FILE).exists()
    np.testing.assert_allclose(scorer.predict_proba(df), predict_proba(model, meta, df), rtol=1e-5, atol=1e-7)


SERVE = """
import json, sys
from nextbest.serving.engine import DecisionEngine  # noqa: F401  (the whole serving path, imported)
from nextbest.serving.models import LoadedModel
from nextbest.settings import Paths

model = LoadedModel("nbp", Paths.from_workdir(sys.argv[1]))
scores = model.predict(json.loads(sys.argv[2])).tolist()
print(json.dumps({"torch": "torch" in sys.modules, "version": model.registered.version, "scores": scores}))
"""


def test_serving_loads_and_scores_a_model_without_importing_torch(tmp_path):
    model, meta, df = _model(members=2)
    models = tmp_path / "models"
    save_checkpoint(models / "nbp", model, meta)
    (models / "pinned.json").write_text(json.dumps({"nbp": {"version": "4", "run_id": "r"}}))
    row = df.iloc[7].to_dict()
    env = {**os.environ, "NEXTBEST_MODELS_DIR": str(models)}
    out = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "work"), json.dumps(row, default=int)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False and answer["version"] == "4"
    np.testing.assert_allclose(answer["scores"], predict_proba(model, meta, df.iloc[[7]])[0], rtol=1e-5, atol=1e-7)
