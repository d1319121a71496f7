"""site.recipe_control: the default and its recipe control side by side, from cached tables."""

import pytest

from moe_lib.site import recipe_control


@pytest.mark.slow
def test_recipe_control_joins_balance_entropy_and_loss_per_model_and_layer(tiny_site):
    table = recipe_control.recipe_control(("standard-tiny", "cross-layer-tiny"))
    assert set(table["model"].astype(str)) == {"standard-tiny", "cross-layer-tiny"}
    assert len(table) == 2 * 2  # two MoE layers each
    assert ((table["entropy_share"] > 0) & (table["entropy_share"] <= 1)).all()
    assert (table["max_over_mean"] >= 1).all() and (table["heldout_loss"] > 0).all()
    # the loss is one number per run, repeated over its layers
    assert table.groupby("model", observed=True)["heldout_loss"].nunique().eq(1).all()
