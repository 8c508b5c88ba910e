"""benchmarks/layout_grads.py: both layouts' gradients against float64 on a small conv net."""
import torch
from torch import nn

from benchmarks.layout_grads import worst_errors


def test_both_layouts_are_compared_with_float64_and_a_wrong_gradient_shows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).train()
    images, labels = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    worst = worst_errors(net, images, labels)
    assert set(worst) == {"contiguous", "channels_last"}
    assert all(0 <= e < 1e-3 for rows in worst.values() for e, _ in rows)
    # a float32 backward pass that is wrong (twice the gradient below the pooling) tops the list
    net[4].register_full_backward_hook(lambda m, gin, gout: (gin[0] * 2 if gin[0].dtype == torch.float32 else gin[0],))
    wrong = worst_errors(net, images, labels)
    assert all(rows[-1][0] > 0.5 for rows in wrong.values())
