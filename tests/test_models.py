import pytest
import torch

from edge.errors import ConfigError
from train.models import available_models, create_model


def test_lisa_cnn_shapes_match_the_rp2_architecture():
    m = create_model("lisa_cnn")
    x = torch.rand(3, 3, 32, 32)
    f = m.features1(x)
    assert f.shape == (3, 64, 16, 16)  # conv1 8x8 s2 SAME
    assert m(x).shape == (3, 18)
    assert m.fc.in_features == 2 * 2 * 128  # conv2 6x6 s2 VALID -> 6, conv3 5x5 VALID -> 2
    assert torch.allclose(m(x), m.head(f))


def test_blur_variant_keeps_shapes():
    for k in (3, 5, 7):
        m = create_model("lisa_cnn", blur_kernel=k)
        assert m.features1(torch.rand(1, 3, 32, 32)).shape == (1, 64, 16, 16)


def test_registry_rejects_unknown_names_and_options():
    assert {"lisa_cnn", "lisa_cnn_tiny"} <= set(available_models())
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(TypeError):
        create_model("lisa_cnn", colour="red")


def test_normalisation_is_inside_the_model():
    fixed = create_model("lisa_cnn_tiny", input_norm="fixed")
    assert torch.allclose(fixed.normalize(torch.full((1, 3, 2, 2), 0.5)), torch.zeros(1, 3, 2, 2))
    per_image = create_model("lisa_cnn_tiny", input_norm="image")
    x = torch.rand(2, 3, 32, 32)
    # exposure and contrast changes do not change what the network sees
    assert torch.allclose(per_image.normalize(0.5 * x + 0.2), per_image.normalize(x), atol=1e-5)
    assert torch.allclose(per_image(0.5 * x + 0.2), per_image(x), atol=1e-4)
    with pytest.raises(ConfigError, match="input_norm"):
        create_model("lisa_cnn_tiny", input_norm="zca")
