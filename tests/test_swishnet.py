"""SwishNet in PyTorch: shape, causality, size, normalisation, checkpoints."""

import pytest

torch = pytest.importorskip("torch")

from models.swishnet import (LABELS, CheckpointError, GatedBlock, SwishNet, SwishNetConfig, build,  # noqa: E402
                             gate, load_checkpoint, parameter_count, pooled_mean)


def random_mfcc(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 20 * torch.randn(batch, 20, frames, generator=generator)


@pytest.fixture(scope="module", params=["slim", "wide"])
def model(request):
    torch.manual_seed(0)
    net = build(request.param)
    net.set_normalisation(torch.linspace(-5, 5, 20), torch.linspace(10, 20, 20))
    return net.eval()


def test_parameter_counts_are_in_the_papers_range():
    slim, wide = parameter_count(build("slim")), parameter_count(build("wide"))
    assert (slim, wide) == (4_919, 15_839)  # Fig. 1 counted literally; the paper says 5,483 / 18,267
    assert 3_000 <= slim <= 25_000 and 3_000 <= wide <= 25_000
    assert 2.5 < wide / slim < 4


def test_gate_halves_channels():
    x = torch.randn(2, 8, 5)
    a, b = x[:, :4], x[:, 4:]
    torch.testing.assert_close(gate(x), torch.tanh(a) * torch.sigmoid(b))
    assert GatedBlock(20, 16, 3, 6)(torch.randn(2, 20, 7)).shape == (2, 16, 7)  # (16 / 2) + (16 / 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        GatedBlock(20, 6, 3, 6)


@pytest.mark.parametrize("frames", [1, 2, 5, 8, 48, 98, 198, 1000])
def test_any_length_works(model, frames):
    x = random_mfcc(3, frames)
    assert model.frame_logits(x).shape == (3, frames, len(LABELS))
    assert model(x).shape == (3, len(LABELS))


def test_no_frames_is_a_clear_error(model):
    with pytest.raises(ValueError, match="frames >= 1"):
        model(random_mfcc(1, 0))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 13, 10))


def test_future_frames_never_change_past_outputs(model):
    x = random_mfcc(2, 120)
    changed = x.clone()
    changed[:, :, 70:] = random_mfcc(2, 50, seed=1)
    with torch.no_grad():
        before, after = model.frame_logits(x), model.frame_logits(changed)
    assert torch.equal(before[:, :70], after[:, :70])
    assert not torch.allclose(before[:, 70:], after[:, 70:])


def test_pooled_mean_averages_only_the_weighted_frames_with_their_left_context(model):
    x = random_mfcc(2, 90)
    weights = torch.zeros(2, 90)
    weights[0] = 1.0  # the whole row
    weights[1, 30:67] = 1.0  # frames 30-66, seen with 30 frames of context; 67+ is right padding
    with torch.no_grad():
        pooled = pooled_mean(model.frame_logits(x), weights)
        torch.testing.assert_close(pooled[0], model(x[:1])[0])
        torch.testing.assert_close(pooled[1], model.frame_logits(x[1:, :, :67])[0, 30:].mean(dim=0))
        assert not torch.allclose(pooled[1], model(x[1:, :, 30:67])[0])  # the context matters


def test_normalisation_is_a_buffer_inside_the_model():
    net = build("slim").eval()
    plain = SwishNet(net.config).eval()
    plain.load_state_dict(net.state_dict())  # the same weights, identity normalisation
    net.set_normalisation(torch.full((20,), 3.0), torch.full((20,), 2.0))
    x = random_mfcc(1, 50)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain((x - 3.0) / 2.0))
        assert not torch.allclose(net(x), plain(x))
    assert {"feature_mean", "feature_std"} <= net.state_dict().keys()
    assert parameter_count(net) == 4_919  # buffers are not parameters


@pytest.mark.parametrize("dilations", [None, (1, 3, 6, 12, 24)])
def test_receptive_field_is_what_the_config_says(dilations):
    net = SwishNet(SwishNetConfig.for_arch("slim", dilations)).eval()
    field = net.config.receptive_field
    assert field == (38 if dilations is None else 108)
    x = random_mfcc(1, field + 20)
    changed = x.clone()
    changed[:, :, 0] += 50
    with torch.no_grad():
        moved = (net.frame_logits(x) - net.frame_logits(changed)).abs().amax(dim=2)[0]
    assert moved[field - 1] > 0 and torch.all(moved[field:] == 0)


def test_config_round_trip_and_wide_doubles_widths():
    wide = SwishNetConfig.for_arch("wide")
    assert wide.block_filters == (32, 16, 16) and wide.stack_filters == (32, 32, 32, 32, 64)
    assert SwishNetConfig.from_dict(wide.to_dict()) == wide
    with pytest.raises(ValueError, match="slim"):
        SwishNetConfig.for_arch("huge")
    with pytest.raises(ValueError, match="five|5 positive"):
        SwishNetConfig.for_arch("slim", (1, 2))


def test_checkpoint_carries_its_shape(tmp_path, model):
    path = tmp_path / "best.pt"
    torch.save({"config": model.config.to_dict(), "model": model.state_dict()}, path)
    loaded, checkpoint = load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    x = random_mfcc(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a SwishNet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
