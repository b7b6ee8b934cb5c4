"""Validation during training: data-set-wide (confusion-matrix) IoU per class, and its mean over the
classes present, per task head; every head is also scored as instrument-vs-background against the
`binary` labels (the only labels of the real laparoscopic sets). Full metrics: `mffseg evaluate`."""
import torch
from tqdm import tqdm

from mffseg_ros.model.classes import TASK_CLASSES

IGNORE = 255


def _accumulate(cm, pred, gt):
    c = cm.shape[0]
    keep = gt != IGNORE
    cm += torch.bincount(gt[keep] * c + pred[keep], minlength=c * c).view(c, c)


def iou_summary(cm, names):
    """{'iou': {class: IoU}, 'miou': mean} over the classes present in the ground truth; None if none."""
    inter = cm.diag().double()
    union = cm.sum(0).double() + cm.sum(1).double() - inter
    present = cm.sum(1) > 0
    if not present.any():
        return None
    iou = inter / union.clamp(min=1)
    return {'iou': {n: float(v) for n, v, p in zip(names, iou, present) if p},
            'miou': float(iou[present].mean())}


@torch.no_grad()
def validate(model, loader, device, autocast, progress=True):
    was_training = model.training
    model.eval()
    cms = {t: torch.zeros(c, c, dtype=torch.int64) for t, c in model.tasks.items()}
    binary_cms = {t: torch.zeros(2, 2, dtype=torch.int64) for t in model.tasks}
    for batch in tqdm(loader, desc='validate', leave=False, disable=not progress):
        with autocast():
            out = model(batch['image'].to(device))['out']
        gt_binary = batch['binary'].flatten()
        for task, logits in model.split(out).items():
            pred = logits.argmax(1).cpu().flatten()
            _accumulate(cms[task], pred, batch[task].flatten())
            _accumulate(binary_cms[task], (pred > 0).long(), gt_binary)
    model.train(was_training)
    result = {}
    for task in model.tasks:
        names = TASK_CLASSES.get(task, [str(i) for i in range(model.tasks[task])])
        scored = [(task, cms[task], names)]
        if task != 'binary':
            scored.append((f'{task}_as_binary', binary_cms[task], TASK_CLASSES['binary']))
        for key, cm, n in scored:
            summary = iou_summary(cm, n)
            if summary is not None:
                result[key] = summary
    return result
