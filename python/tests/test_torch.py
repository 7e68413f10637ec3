"""The nn.Module path: a PyTorch module exported through torch.onnx and loaded, checked
against PyTorch's own forward hook and autograd. Runs where torch and torchvision are
installed (CI does not install them: a large download)."""

import numpy as np
import pytest

import deepvis

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def test_a_torch_module_loads_and_matches_pytorch():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    # Non-trivial BatchNorm statistics, so folding them in the export is exercised.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net.train()
    with pytest.warns(UserWarning, match="assuming ImageNet normalization"):
        model = deepvis.load(net, input_shape=(1, 3, 64, 64))
    assert net.training, "the module's mode is restored after the export"
    net.eval()
    names = {l.name for l in model.layers()} | {a for l in model.layers() for a in l.aliases}
    assert {"layer2.0", "layer4.1", "layer4"} <= names

    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    seen = {}
    hook = net.layer2[0].register_forward_hook(lambda m, i, o: seen.__setitem__("act", o))
    net(x)
    hook.remove()
    seen["act"][0, 5].mean().backward()

    p = deepvis.probe(model, "layer2.0", input=x.detach().numpy(), channel=5)
    np.testing.assert_allclose(p.activation, seen["act"].detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.input_grad, x.grad.numpy(), rtol=1e-3, atol=1e-7)

    img = deepvis.render(model, "layer4.1:7", size=64, steps=8, progress=False)
    assert img.shape == (64, 64, 3)
    assert img.final[0] > img.initial[0]


def test_a_module_needs_its_input_shape():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="input_shape"):
        deepvis.load(net)
