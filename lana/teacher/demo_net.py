"""The demo teacher: a small ResNet for 28×28 grey images (Fashion-MNIST).

Any model works as a teacher; this one exists so that ``lana demo`` has something real to
train and accelerate on a CPU in minutes. Its blocks are standard ResNet basic blocks, so
block discovery finds them by class name as it would in torchvision.
"""
from __future__ import annotations

from torch import Tensor, nn

DEMO_WIDTHS = (16, 32, 64)  # the demo teacher's channels per stage


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN layers plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class DemoResNet(nn.Module):
    """A ResNet with ``len(widths)`` stages of ``depth`` basic blocks each."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: tuple[int, ...] = DEMO_WIDTHS,
        depth: int = 2,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def demo_resnet(
    num_classes: int = 10,
    in_chans: int = 1,
    widths: list[int] | None = None,
    depth: int = 2,
    stem_stride: int = 2,
) -> DemoResNet:
    """Build the demo teacher (``lana.teacher.demo_net:demo_resnet`` in a config).

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        widths: channels of each stage; each stage after the first halves the resolution.
        depth: basic blocks per stage.
        stem_stride: stride of the stem conv (2 halves every later resolution).

    Returns:
        An untrained ``DemoResNet``.
    """
    return DemoResNet(num_classes, in_chans, tuple(widths or DEMO_WIDTHS), depth, stem_stride)
