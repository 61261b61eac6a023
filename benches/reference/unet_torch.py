"""The unet-wgpu U-Net in PyTorch, layer for layer and name for name, so that
a unet-wgpu checkpoint loads into it (and a state_dict saved from it matches
unet-wgpu's tensor names and layouts). Used by the parity fixture, the
checkpoint check and the step benchmark; run by hand, never by CI.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """conv3x3 -> [BN] -> ReLU -> dropout -> conv3x3 -> [BN] -> ReLU."""

    def __init__(self, cin, cout, batch_norm, p):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout) if batch_norm else None
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout) if batch_norm else None
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x) if self.bn1 is not None else x)
        x = self.drop(x)
        x = self.conv2(x)
        return F.relu(self.bn2(x) if self.bn2 is not None else x)


class UNet(nn.Module):
    def __init__(self, in_channels=3, classes=6, depth=4, base=16, batch_norm=False,
                 dropout=(0.1, 0.1, 0.2, 0.2, 0.3), bilinear=False):
        super().__init__()
        self.depth, self.bilinear = depth, bilinear
        f = lambda level: base << level
        cin = in_channels
        for level in range(depth):
            setattr(self, f"enc{level}", Block(cin, f(level), batch_norm, dropout[level]))
            cin = f(level)
        self.bottleneck = Block(cin, f(depth), batch_norm, dropout[depth])
        for level in range(depth):
            up = nn.Conv2d(f(level + 1), f(level), 1) if bilinear else nn.ConvTranspose2d(f(level + 1), f(level), 2, stride=2)
            setattr(self, f"up{level}", up)
            setattr(self, f"dec{level}", Block(2 * f(level), f(level), batch_norm, dropout[level]))
        self.head = nn.Conv2d(f(0), classes, 1)

    def forward(self, x):
        skips = []
        for level in range(self.depth):
            x = getattr(self, f"enc{level}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            if self.bilinear:
                x = getattr(self, f"up{level}")(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            else:
                x = getattr(self, f"up{level}")(x)
            x = getattr(self, f"dec{level}")(torch.cat([x, skips[level]], dim=1))
        return self.head(x)


def from_metadata(meta):
    """The model a unet-wgpu checkpoint's metadata describes."""
    return UNet(
        in_channels=int(meta["model.in_channels"]),
        classes=int(meta["model.classes"]),
        depth=int(meta["model.depth"]),
        base=int(meta["model.base"]),
        batch_norm=meta["model.batch_norm"] == "true",
        dropout=[float(p) for p in meta["model.dropout"].split(",")],
        bilinear=meta["model.upsampling"] == "bilinear",
    )
