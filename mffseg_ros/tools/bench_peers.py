"""The networks the paper compares MFF with, built without pretrained weights (speed does not depend on
them). Peers from segmentation_models_pytorch need torchvision; where it is missing they are reported
as unavailable with the import error. The plain U-Net is defined here (no dependency).

Each peer is wrapped in `SegmenterModel`, which gives it MFF's calling convention, so `mffseg bench`
times peers through the same Segmenter, backends and fast path as MFF."""
from collections import OrderedDict

import torch
from torch import nn

# name -> (smp class, encoder); PSPNet as in the paper's comparison, with a ResNet-34 encoder.
SMP_PEERS = {
    'LinkNet-34': ('Linknet', 'resnet34'),
    'TernausNet-11 (U-Net VGG-11)': ('Unet', 'vgg11'),
    'PSPNet (ResNet-34)': ('PSPNet', 'resnet34'),
}
PLAIN_UNET = 'U-Net (plain)'


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class PlainUNet(nn.Module):
    """Ronneberger et al. 2015 layout (same-padding, batch norm): 4 poolings, 64..1024 channels."""

    def __init__(self, num_classes, base=64, depth=4):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(3, widths[0])] +
                                  [_double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, 2) for i in range(depth, 0, -1))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


class SegmenterModel(nn.Module):
    """A plain `x -> logits` network seen as a one-task (type) model with MFF's interface."""

    def __init__(self, net, num_classes):
        super().__init__()
        self.net = net
        self.tasks = OrderedDict(type=int(num_classes))
        self.task_slices = OrderedDict(type=slice(0, int(num_classes)))
        self.branch = 'main'

    def forward(self, x, branch='main'):
        return {'out': self.net(x)}


def build_peers(num_classes):
    """[(name, model or None, reason or '')]: every peer, built or with why it cannot be."""
    peers = []
    try:
        import segmentation_models_pytorch as smp
        smp_error = ''
    except Exception as e:  # ImportError, or torchvision failing inside smp's import
        smp, smp_error = None, f'segmentation_models_pytorch unavailable: {type(e).__name__}: {e}'
    for name, (cls_name, encoder) in SMP_PEERS.items():
        if smp is None:
            peers.append((name, None, smp_error))
            continue
        try:
            model = getattr(smp, cls_name)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
            peers.append((name, SegmenterModel(model, num_classes).eval(), ''))
        except Exception as e:  # e.g. an smp version without this encoder
            peers.append((name, None, f'{type(e).__name__}: {e}'))
    peers.append((PLAIN_UNET, SegmenterModel(PlainUNet(num_classes), num_classes).eval(), ''))
    return peers
