"""Offline torch models: formulas, full-ranking consistency, rebuilds and the serving export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from offline.models import MODELS, BiasedMF, TwoTower, build_model, export_user_features
from recsys.serving.service import UserFeatures


def _two_tower(user_width: int = 3, item_width: int = 2, **kwargs) -> TwoTower:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    return TwoTower(rng.normal(size=(5, user_width)), rng.normal(size=(7, item_width)),
                    dim=4, hidden=(6,), **kwargs)


def test_mf_forward_is_the_biased_dot_product_formula():
    model = BiasedMF(n_users=2, n_items=3, dim=2, global_bias=0.5)
    with torch.no_grad():
        model.user_factors.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        model.item_factors.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 1.0], [-2.0, 4.0]]))
        model.user_bias.weight.copy_(torch.tensor([[0.1], [-0.2]]))
        model.item_bias.weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
    got = model(torch.tensor([0, 1, 0]), torch.tensor([2, 1, 0])).detach()
    # user 0 × item 2: 0.5 + 0.1 + 3 + (1·-2 + 2·4); user 1 × item 1: 0.5 - 0.2 + 2 + (0 - 1);
    # user 0 × item 0: 0.5 + 0.1 + 1 + 3.
    expected = torch.tensor([0.5 + 0.1 + 3.0 + 6.0, 0.5 - 0.2 + 2.0 - 1.0, 0.5 + 0.1 + 1.0 + 3.0])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("make", [
    lambda: BiasedMF(6, 7, dim=3),
    lambda: _two_tower(),
    lambda: _two_tower(use_ids=False),
    lambda: _two_tower(item_width=0),
], ids=["mf", "two_tower", "two_tower_no_ids", "two_tower_item_ids_only"])
def test_score_all_equals_forward_over_every_item(make):
    torch.manual_seed(1)
    model = make()
    with torch.no_grad():  # non-zero biases so that a dropped bias term would show
        for name, param in model.named_parameters():
            if "bias" in name:
                param.normal_()
    users = torch.tensor([4, 0, 2])
    n_items = model.n_items
    with torch.no_grad():
        full = model.score_all(users)
        pairs = model(users.repeat_interleave(n_items), torch.arange(n_items).repeat(len(users)))
    assert full.shape == (3, n_items)
    torch.testing.assert_close(full, pairs.reshape(3, n_items))
    assert model.user_embeddings().shape[0] == model.n_users


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_rebuilds_from_config_and_state_dict(name):
    model = BiasedMF(4, 5, dim=3) if name == "mf" else _two_tower()
    arrays = {key: getattr(model, key) for key in type(model).array_names}
    assert all(isinstance(v, torch.Tensor) for v in arrays.values())
    config = json.loads(json.dumps(model.config()))  # JSON-able, and no feature arrays in it
    assert not set(config) & {"user_features", "item_features"}
    state = model.state_dict()
    assert set(arrays) <= set(state)  # features travel as buffers
    torch.manual_seed(123)  # a different init, overwritten by the state dict
    rebuilt = build_model(name, config, **{k: state[k] for k in arrays})
    rebuilt.load_state_dict(state)
    users = torch.tensor([0, 3, 1])
    with torch.no_grad():
        assert torch.equal(rebuilt.score_all(users), model.score_all(users))


def test_seeded_init_is_reproducible_and_reset_restores_it():
    torch.manual_seed(7)
    first = _two_tower().state_dict()
    torch.manual_seed(0)
    model = _two_tower()  # _two_tower seeds 0 itself: same draws as `first`
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    mf = BiasedMF(3, 4, dim=2, init_std=0.5, global_bias=3.0)
    with torch.no_grad():
        mf.global_bias.fill_(-1.0)
        mf.item_bias.weight.fill_(2.0)
    mf.reset_parameters()
    assert mf.global_bias.item() == 3.0 and torch.count_nonzero(mf.item_bias.weight) == 0
    assert 0.1 < mf.user_factors.weight.std().item() < 2.0


def test_invalid_arguments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match=r"^name: expected a model among"):
        build_model("svd", {})
    with pytest.raises(ValueError, match=r"^arrays: expected the arrays model 'two_tower' takes"):
        build_model("two_tower", {"dim": 2})
    with pytest.raises(ValueError, match="NaN"):
        TwoTower(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match="use_ids"):
        TwoTower(np.ones((2, 0)), np.ones((2, 2)), use_ids=False)
    with pytest.raises(ValueError, match=">= 1"):
        BiasedMF(0, 3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_user_features_load_in_the_serving_app(name, tmp_path):
    model = BiasedMF(4, 5, dim=3) if name == "mf" else _two_tower()
    raw_ids = [f"u{i}" for i in range(model.n_users)]
    path = export_user_features(model, tmp_path / "features" / "users.parquet", raw_ids)
    table = UserFeatures(str(path))
    with torch.no_grad():
        expected = model.user_embeddings().numpy()
    assert table.matrix.shape == expected.shape
    for row in (0, model.n_users - 1):
        np.testing.assert_array_equal(table.get(raw_ids[row]), expected[row].astype(np.float64))
    assert table.get("nobody") is None
    assert not math.isnan(float(table.matrix.sum()))
    with pytest.raises(ValueError, match="user_ids: expected one id per row"):
        export_user_features(model, tmp_path / "x.parquet", raw_ids[:-1])
    with pytest.raises(ValueError, match="user_ids: expected distinct ids"):
        export_user_features(model, tmp_path / "x.parquet", ["a"] * model.n_users)
