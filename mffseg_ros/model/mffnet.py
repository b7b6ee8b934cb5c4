"""MFFNet (Islam et al., RA-L 2019): ResNet18 main branch, half-resolution auxiliary branch with shared
weights, summing SPP, multi-resolution feature fusion and LinkNet decoders.

Layer settings follow the issue (which follows the authors' released code). Several task heads (class
blocks) may share one trunk; their channels are concatenated in 'out'/'aux' (torchvision-style dict),
and `split()` cuts them apart again. Everything here is plain PyTorch.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from mffseg_ros.model.classes import NUM_CLASSES

DEFAULT_TASKS = OrderedDict(parts=NUM_CLASSES['parts'], type=NUM_CLASSES['type'])
SPP_BINS = (16, 8, 4, 2)
BRANCHES = ('main', 'aux')


def conv_bn_relu(cin, cout, kernel, stride=1, padding=0, dilation=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection when the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, 3, stride, 1)
        self.conv2 = conv_bn_relu(cout, cout, 3, 1, 1, relu=False)
        self.downsample = (conv_bn_relu(cin, cout, 1, stride, relu=False)
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.downsample(x), inplace=True)


def resnet_stage(cin, cout, stride, blocks=2):
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


class Encoder(nn.Module):
    """ResNet18 layout: 7x7/2 stem + 3x3/2 max-pool, four stages of two basic blocks."""

    channels = (64, 64, 128, 256, 512)  # stem, stage1..4

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 64, 7, 2, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.stage1 = resnet_stage(64, 64, 1)
        self.stage2 = resnet_stage(64, 128, 2)
        self.stage3 = resnet_stage(128, 256, 2)
        self.stage4 = resnet_stage(256, 512, 2)

    def forward_to_stage2(self, x):
        """Features the auxiliary branch needs: pooled stem (1/4), stage1 (1/4), stage2 (1/8)."""
        stem = self.pool(self.stem(x))
        s1 = self.stage1(stem)
        return stem, s1, self.stage2(s1)


class SumSPP(nn.Module):
    """Parameter-free spatial pyramid pooling that sums the upsampled pools with its input.

    Each level averages over a kernel of (size // bins) per side, so a map gets about `bins` cells per
    side whatever its size; kernels are plain ints, which keeps ONNX export and CUDA graphs static.
    """

    def __init__(self, bins=SPP_BINS):
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x):
        h, w = x.shape[-2:]
        out = x
        for n in self.bins:
            kernel = (max(1, h // n), max(1, w // n))
            pooled = F.avg_pool2d(x, kernel, kernel)
            out = out + F.interpolate(pooled, size=(h, w), mode='bilinear', align_corners=False)
        return out


class LinkNetDecoderBlock(nn.Module):
    """1x1 conv C->C/4, 3x3 transposed conv (x2 upsampling; a 3x3 conv when stride 1), 1x1 conv -> out."""

    def __init__(self, cin, cout, stride=2):
        super().__init__()
        mid = cin // 4
        self.reduce = conv_bn_relu(cin, mid, 1)
        if stride == 2:
            self.up = nn.Sequential(nn.ConvTranspose2d(mid, mid, 3, 2, 1, output_padding=1, bias=False),
                                    nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        else:
            self.up = conv_bn_relu(mid, mid, 3, 1, 1)
        self.expand = conv_bn_relu(mid, cout, 1)

    def forward(self, x):
        return self.expand(self.up(self.reduce(x)))


class MFFModule(nn.Module):
    """Fuses aux features (128 ch, 1/16) and SPP'd main features (512 ch, 1/32) at 1/32."""

    def __init__(self, aux_ch=128, main_ch=512, out_ch=512):
        super().__init__()
        self.aux_proj = conv_bn_relu(aux_ch, out_ch, 1, stride=2, relu=False)
        self.main_proj = conv_bn_relu(main_ch, out_ch, 3, padding=2, dilation=2, relu=False)

    def forward(self, aux, main):
        return F.relu(self.aux_proj(aux) + self.main_proj(main), inplace=True)


class ClassBlock(nn.Module):
    """Main-path head: 3x3/2 transposed conv 64->32, 3x3 conv 32->32, 2x2/2 transposed conv -> C."""

    def __init__(self, num_classes, cin=64, mid=32):
        super().__init__()
        self.up1 = nn.Sequential(nn.ConvTranspose2d(cin, mid, 3, 2, 1, output_padding=1, bias=False),
                                 nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv = conv_bn_relu(mid, mid, 3, 1, 1)
        self.classify = nn.ConvTranspose2d(mid, num_classes, 2, 2)

    def forward(self, x):
        return self.classify(self.conv(self.up1(x)))


class AuxHead(nn.Module):
    """Aux class map at 1/8: LinkNet decoder 512->128 summed with aux features, 3x3 conv 128->32, then a
    2x2/2 transposed conv per task (the shared part is computed once for all tasks)."""

    def __init__(self, tasks, cin=512, aux_ch=128, mid=32):
        super().__init__()
        self.decoder = LinkNetDecoderBlock(cin, aux_ch)
        self.conv = conv_bn_relu(aux_ch, mid, 3, 1, 1)
        self.classify = nn.ModuleList(nn.ConvTranspose2d(mid, c, 2, 2) for c in tasks.values())  # tasks order

    def forward(self, fused, aux_features):
        x = self.conv(self.decoder(fused) + aux_features)
        return torch.cat([head(x) for head in self.classify], dim=1)


class MFFNet(nn.Module):
    """The MFF segmentation network.

    forward(x) -> {'out': logits at H x W} and, in training mode or with return_aux=True,
    'aux': logits at H/8 x W/8. With branch='aux' (the paper's Table V fast mode) the main decoder is
    skipped and 'out' is the aux map bilinearly upsampled to H x W. Channels of all tasks are
    concatenated in `tasks` order; use `split()` to get {task: logits}.
    """

    def __init__(self, *, tasks=None, branch='main'):
        super().__init__()
        tasks = OrderedDict(DEFAULT_TASKS if tasks is None else tasks)
        if not tasks or any(int(c) < 2 for c in tasks.values()):
            raise ValueError(f'tasks must map task names to class counts >= 2, got {dict(tasks)}')
        self.tasks = OrderedDict((t, int(c)) for t, c in tasks.items())
        start, self.task_slices = 0, OrderedDict()
        for t, c in self.tasks.items():
            self.task_slices[t] = slice(start, start + c)
            start += c
        self.num_outputs = start
        self.branch = branch

        self.encoder = Encoder()
        self.spp = SumSPP()
        self.mff = MFFModule()
        self.decoder4 = LinkNetDecoderBlock(512, 256)
        self.decoder3 = LinkNetDecoderBlock(256, 128)
        self.decoder2 = LinkNetDecoderBlock(128, 64)
        self.decoder1 = LinkNetDecoderBlock(64, 64, stride=1)
        # A list in `tasks` order (ModuleDict can't take the key 'type': it clashes with Module.type).
        self.class_blocks = nn.ModuleList(ClassBlock(c) for c in self.tasks.values())
        self.aux_head = AuxHead(self.tasks)

    @property
    def branch(self):
        return self._branch

    @branch.setter
    def branch(self, value):
        if value not in BRANCHES:
            raise ValueError(f'branch must be one of {BRANCHES}, got {value!r}')
        self._branch = value

    def split(self, logits):
        """{task: logits} from concatenated logits (works on 'out' and 'aux')."""
        return OrderedDict((t, logits[:, s]) for t, s in self.task_slices.items())

    @staticmethod
    def check_input(x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'MFFNet expects a (B, 3, H, W) tensor, got shape {tuple(x.shape)}')
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % 32 or w % 32:
            raise ValueError(f'MFFNet input height and width must be multiples of 32, got {h}x{w} '
                             f'(resize to e.g. {max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)})')

    def forward(self, x, *, branch=None, return_aux=None):
        self.check_input(x)
        branch = self._branch if branch is None else branch
        if branch not in BRANCHES:
            raise ValueError(f'branch must be one of {BRANCHES}, got {branch!r}')
        want_aux = self.training if return_aux is None else return_aux

        enc = self.encoder
        stem, s1, s2 = enc.forward_to_stage2(x)
        s3 = enc.stage3(s2)
        s4 = self.spp(enc.stage4(s3))
        half = F.interpolate(x, scale_factor=0.5, mode='bilinear', align_corners=False)
        aux_features = enc.forward_to_stage2(half)[2]  # same stem and stages: 128 ch at 1/16
        fused = self.mff(aux_features, s4)

        result = OrderedDict()
        aux = self.aux_head(fused, aux_features) if (want_aux or branch == 'aux') else None
        if branch == 'aux':
            result['out'] = F.interpolate(aux, size=x.shape[-2:], mode='bilinear', align_corners=False)
        else:
            d = self.decoder4(fused) + s3
            d = self.decoder3(d) + s2
            d = self.decoder2(d) + s1
            d = self.decoder1(d) + stem
            result['out'] = torch.cat([block(d) for block in self.class_blocks], dim=1)
        if want_aux:
            result['aux'] = aux
        return result


def build_mffnet(*, tasks=None, branch='main', weights=None, device='cpu'):
    """Builds MFFNet; with `weights` (a safetensors path) the tasks come from the file's metadata."""
    if weights is not None:
        from mffseg_ros.model.weights import load_weights
        model, _ = load_weights(weights, device=device)
        model.branch = branch
        return model
    return MFFNet(tasks=tasks, branch=branch).to(device)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
