"""tomecis.models: names and local checkpoints (made here, no network)."""

import pytest
import torch
from safetensors.torch import save_file

import tomecis
from tomecis.models import short_name


def test_short_names_and_timm_names():
    assert tomecis.resolve_model_name("deit_small") == "deit_small_patch16_224"
    assert tomecis.resolve_model_name("vit_small_patch16_224") == "vit_small_patch16_224"
    assert short_name("deit_base_patch16_224") == "deit_base"
    with pytest.raises(ValueError, match="unknown model 'deit_smal'.*did you mean deit_small"):
        tomecis.resolve_model_name("deit_smal")


@pytest.mark.parametrize("fmt", ["pth-model", "pth-raw", "safetensors"])
def test_local_checkpoint_round_trip(tmp_path, fmt):
    source = tomecis.create_model("deit_tiny")
    state = source.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": state} if fmt == "pth-model" else state, path)
    loaded = tomecis.create_model("deit_tiny", checkpoint=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert not loaded.training


def test_check_supported_answers_whether_a_model_can_be_swept():
    model = tomecis.check_supported("deit_tiny")  # short names too; built on the meta device, patched
    assert model.patch_embed.proj.weight.device.type == "meta" and model.r == 0
    assert tomecis.max_r(model) == 98 == tomecis.max_r("deit_tiny")
    assert tomecis.check_supported("deit_tiny_distilled_patch16_224").merge_state.distill_token
    with pytest.raises(ValueError, match=r"^resnet50 cannot be swept: .*timm VisionTransformer.*got ResNet"):
        tomecis.check_supported("resnet50")
    with pytest.raises(ValueError, match=r"^vit_base_patch16_reg4_gap_256 cannot be swept: .*class token"):
        tomecis.check_supported("vit_base_patch16_reg4_gap_256")
    with pytest.raises(ValueError, match=r"^Linear cannot be swept: .*got Linear"):
        tomecis.check_supported(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown model 'deit_tinny'"):
        tomecis.check_supported("deit_tinny")
