"""The weight EMA: what it averages, how its decay ramps up, and that it survives a checkpoint."""

import torch
from torch import nn

from lesion.train.ema import WeightEMA


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_average_follows_the_weights_with_a_ramped_decay():
    net = small_net()
    ema = WeightEMA(net, decay=0.99)
    start = ema.model[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves the BatchNorm statistics and its counter
    ema.update(net)
    decay = 2 / 11  # min(0.99, (1 + 1) / (10 + 1)): a young average follows the weights closely
    assert torch.allclose(ema.model[0].weight, decay * start + (1 - decay) * net[0].weight)
    assert torch.allclose(ema.model[1].running_mean, (1 - decay) * net[1].running_mean)  # buffers averaged too
    assert int(ema.model[1].num_batches_tracked) == 1  # integer buffers copied
    for _ in range(2000):
        ema.update(net)
    assert torch.allclose(ema.model[0].weight, net[0].weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_checkpoint_round_trip():
    net = small_net()
    ema = WeightEMA(net, decay=0.9)
    with torch.no_grad():
        net[0].bias.fill_(3.0)
    for _ in range(5):
        ema.update(net)
    restored = WeightEMA(small_net(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 5
    assert torch.equal(restored.model[0].bias, ema.model[0].bias)
    ema.update(net)
    restored.update(net)  # the same next step: the decay ramp continues where it was
    assert torch.equal(restored.model[0].bias, ema.model[0].bias)
