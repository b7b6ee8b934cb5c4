"""The paper's losses: L = L_main + 0.4 L_aux + 0.01 L_adv, and the discriminator's BCE.

Label value 255 is ignored. Pixels a sample does not label for a task but labels as instrument /
background (`binary`, e.g. the laparoscopic sets) still train that task's head through a binary loss
on P(instrument) = 1 - softmax(head)[background].
"""
import torch
import torch.nn.functional as F

IGNORE = 255


def task_loss(logits, target, binary=None, binary_weight=1.0, class_weights=None):
    """Mean over supervised pixels of cross-entropy on `target` (B, H, W; 255 = ignore) plus, where only
    `binary` is known, `binary_weight` x BCE of P(instrument) against it. Computed in float32.
    `class_weights` (one per class) multiply each labelled pixel's cross-entropy by its class's weight;
    the mean stays over pixels, so weights of 1 change nothing."""
    logits = logits.float()
    labelled = target != IGNORE
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                                  device=logits.device)
    total = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=IGNORE, reduction='sum')
    count = labelled.sum()
    if binary is not None:
        fallback = ~labelled & (binary != IGNORE)
        if fallback.any():
            log_all = torch.logsumexp(logits, dim=1)
            log_bg = logits[:, 0] - log_all                              # log P(background)
            log_fg = torch.logsumexp(logits[:, 1:], dim=1) - log_all     # log P(instrument)
            y = (binary == 1).float()
            bce = -(y * log_fg + (1 - y) * log_bg)
            total = total + binary_weight * bce[fallback].sum()
            count = count + fallback.sum()
    return total / count.clamp(min=1)


def downsample_labels(labels, size):
    """Nearest-neighbour resize of integer label maps (B, H, W) to `size` (h, w)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode='nearest')[:, 0].to(labels.dtype)


def segmentation_loss(logits_by_task, targets, binary_weight=1.0, class_weights=None):
    """Sum over tasks of `task_loss`; `targets` holds (B, H, W) maps per task and `binary`, at any size
    (nearest-downsampled to the logits' size, which is how the aux ground truth is made). `binary_weight`
    weighs binary-only pixels (real frames without parts/type labels), which a few real frames among
    many synthetic ones would otherwise hardly train. `class_weights` maps a task to its per-class
    weights (`task_loss`); tasks it does not name are unweighted."""
    loss = 0.0
    for task, logits in logits_by_task.items():
        size = logits.shape[-2:]
        binary = downsample_labels(targets['binary'], size) if task != 'binary' else None
        weights = (class_weights or {}).get(task)
        loss = loss + task_loss(logits, downsample_labels(targets[task], size), binary, binary_weight, weights)
    return loss


def prediction_probs(logits_by_task):
    """Discriminator input for a prediction: per-task softmax, concatenated in task order."""
    return torch.cat([torch.softmax(logits.float(), dim=1) for logits in logits_by_task.values()], dim=1)


def ground_truth_probs(logits_by_task, targets):
    """Discriminator input for the ground truth: per-task one-hot maps. Pixels the task does not label
    take the (detached) prediction, so the discriminator cannot tell real from fake there."""
    maps = []
    for task, logits in logits_by_task.items():
        target = targets[task]
        c = logits.shape[1]
        labelled = (target != IGNORE)[:, None]
        onehot = F.one_hot(target.long().clamp(max=c - 1), c).permute(0, 3, 1, 2).float()
        maps.append(torch.where(labelled, onehot, torch.softmax(logits.detach().float(), dim=1)))
    return torch.cat(maps, dim=1)


def adversarial_loss(disc_logits_on_prediction):
    """Segmenter's adversarial term: BCE of D(prediction) against the "ground truth" label 1."""
    d = disc_logits_on_prediction.float()
    return F.binary_cross_entropy_with_logits(d, torch.ones_like(d))


def discriminator_loss(disc_logits_on_truth, disc_logits_on_prediction):
    """Discriminator: BCE with one-hot ground truth -> 1 and prediction -> 0."""
    real, fake = disc_logits_on_truth.float(), disc_logits_on_prediction.float()
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
