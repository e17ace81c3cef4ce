import pytest
import torch

from raysegment import UNet
from raysegment.model.unet import count_parameters


def test_seed_parameter_count():
    # The seed's Keras model (3-channel input, 64 -> 1024 channels, depth 4) has 31,043,521 parameters.
    assert count_parameters(UNet(in_channels=3, out_channels=1, base_channels=64, depth=4)) == 31_043_521


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 37, 50), (1, 1, 16, 100)])
def test_output_shape_matches_input_including_odd_sizes(shape):
    model = UNet(base_channels=4, depth=3).eval()
    with torch.no_grad():
        out = model(torch.rand(shape))
    assert out.shape == (shape[0], 1, shape[2], shape[3])


def test_configurable_channels():
    model = UNet(in_channels=3, out_channels=2, base_channels=4, depth=2).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_wrong_channels_give_clear_error():
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\)"):
        UNet(base_channels=4, depth=2)(torch.rand(1, 3, 32, 32))


def test_gradients_reach_first_layer():
    model = UNet(base_channels=4, depth=3)
    model(torch.rand(2, 1, 32, 32)).mean().backward()
    first = model.inc.block[0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_invalid_config_rejected():
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)
