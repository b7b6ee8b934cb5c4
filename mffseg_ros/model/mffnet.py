"""MFFNet (Islam et al., RA-L 2019): ResNet-18 main branch, half-resolution auxiliary branch with shared
weights, summing SPP, multi-resolution feature fusion and LinkNet decoders.

Built like torchvision's and segmentation_models_pytorch's models: an encoder returning its feature list
(encoder.py, torchvision parameter names), the MFF fusion (fusion.py), a LinkNet decoder taking the skip
features (decoder.py) and task heads (heads.py). Several task heads may share one trunk; their channels
are concatenated in 'out'/'aux' (torchvision-style dict), and `split()` cuts them apart again.
Layer settings follow the authors' released code. Everything here is plain PyTorch.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from mffseg_ros.model.classes import NUM_CLASSES
from mffseg_ros.model.decoder import LinkNetDecoder
from mffseg_ros.model.encoder import ResNet18Encoder
from mffseg_ros.model.fusion import MFFFusion
from mffseg_ros.model.heads import AuxHead, TaskHead

DEFAULT_TASKS = OrderedDict(parts=NUM_CLASSES['parts'], type=NUM_CLASSES['type'])
BRANCHES = ('main', 'aux')
AUX_DEPTH = 2  # the auxiliary branch runs the shared encoder up to layer2 (128 ch at 1/16 of the input)


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

        # Registration order = parameter order, which checkpointed optimiser state is indexed by: keep it.
        self.encoder = ResNet18Encoder()
        self.fusion = MFFFusion()
        self.decoder = LinkNetDecoder()
        # A list in `tasks` order (ModuleDict can't take the key 'type': it clashes with Module.type).
        self.heads = nn.ModuleList(TaskHead(c) for c in self.tasks.values())
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

        features = self.encoder(x)  # pooled stem, layer1..layer4
        half = F.interpolate(x, scale_factor=0.5, mode='bilinear', align_corners=False)
        aux_features = self.encoder(half, depth=AUX_DEPTH)[-1]  # same weights: 128 ch at 1/16
        fused = self.fusion(aux_features, features[-1])

        result = OrderedDict()
        aux = self.aux_head(fused, aux_features) if (want_aux or branch == 'aux') else None
        if branch == 'aux':
            result['out'] = F.interpolate(aux, size=x.shape[-2:], mode='bilinear', align_corners=False)
        else:
            d = self.decoder(fused, features[:-1])
            result['out'] = torch.cat([head(d) for head in self.heads], dim=1)
        if want_aux:
            result['aux'] = aux
        return result


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
