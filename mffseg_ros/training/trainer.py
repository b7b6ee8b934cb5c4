"""The training loop: MFFNet + discriminator, the paper's losses and optimisers, AMP on CUDA,
checkpoint/resume, CSV/PNG curves, DistributedDataParallel under torchrun."""
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from mffseg_ros.errors import MffsegError
from mffseg_ros.model import Discriminator, MFFNet
from mffseg_ros.model.pretrained import load_encoder_weights
from mffseg_ros.model.weights import Preprocessing, Provenance, WeightsMeta, save_weights
from mffseg_ros.training import losses
from mffseg_ros.training.checkpoint import load_checkpoint, save_checkpoint
from mffseg_ros.training.config import resolve_specs
from mffseg_ros.training.history import load_initial_weights, totals
from mffseg_ros.training.loader import evaluation_samples, training_samples
from mffseg_ros.training.logs import CsvLog, git_revision, plot_curves
from mffseg_ros.training.validation import validate

log = logging.getLogger(__name__)
WEIGHTS_FILE = 'weights.safetensors'
STOP_FILE = 'STOP'  # touch <out>/STOP: the run ends after the current step and writes its weights
LOSS_KEYS = ('loss', 'main', 'aux', 'adv', 'disc')


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # deterministic cuBLAS
    torch.backends.cudnn.benchmark = False
    # warn_only: bilinear upsampling has no deterministic CUDA backward; everything else is.
    torch.use_deterministic_algorithms(True, warn_only=True)


class Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        self.enabled = 'WORLD_SIZE' in os.environ  # launched by torchrun (even with one process)
        if self.enabled and not torch.distributed.is_initialized():
            backend = 'nccl' if torch.cuda.is_available() else 'gloo'
            torch.distributed.init_process_group(backend)

    @property
    def main(self):
        return self.rank == 0

    def device(self, wanted='auto'):
        if wanted == 'auto':
            wanted = 'cuda' if torch.cuda.is_available() else 'cpu'
        if wanted == 'cuda' and self.enabled:
            wanted = f'cuda:{self.local_rank}'
        device = torch.device(wanted)
        if device.type == 'cuda':
            if not torch.cuda.is_available():
                raise MffsegError(f'--device {wanted}: CUDA is not available on this machine')
            torch.cuda.set_device(device)
        return device

    def mean(self, value, device):
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def poly_lr(base, iteration, total, power):
    return base * (1 - min(iteration, total) / total) ** power


class Trainer:
    """One training run into `out`. `step(batch)` is one optimisation step of both networks."""

    def __init__(self, cfg, out, *, device='auto', resume=False):
        self.cfg = cfg
        self.out = Path(out)
        self.recipe = cfg['recipe']
        self.dist = Distributed()
        self.device = self.dist.device(device)
        seed_everything(int(cfg['seed']))
        self.model = MFFNet(tasks=cfg['tasks'])
        if cfg.get('encoder_weights') and not resume:  # a resumed run gets its weights from the checkpoint
            load_encoder_weights(self.model, cfg['encoder_weights'])
        self.model.to(self.device)
        self.disc = Discriminator(self.model.num_outputs).to(self.device)
        r = self.recipe
        self.opt = torch.optim.Adam(self.model.parameters(), lr=r['lr'], weight_decay=r['weight_decay'])
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=r['disc_lr'], weight_decay=r['weight_decay'])
        self.amp = bool(r['amp']) and self.device.type == 'cuda'
        self.scalers = {'seg': torch.amp.GradScaler('cuda', enabled=self.amp),
                        'disc': torch.amp.GradScaler('cuda', enabled=self.amp)}
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            # Unused with aux off: the aux head still runs in training mode but gets no gradient.
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 find_unused_parameters=not r['aux'])
            self.disc_net = torch.nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
        else:
            self.disc_net = self.disc
        self.iteration = 0
        self.seconds = 0.0  # training time of this run (summed over resumed sessions)
        self.prior_history = []  # earlier runs of the weights this run started from (init_weights)
        if resume:
            counters = load_checkpoint(self.out / 'checkpoint', model=self.model, discriminator=self.disc,
                                       optimizer=self.opt, disc_optimizer=self.disc_opt, scalers=self.scalers)
            self.iteration = int(counters['iteration'])
            # 'hours': checkpoints written before the seconds counter existed
            self.seconds = float(counters.get('seconds', 3600 * float(counters.get('hours', 0.0))))
            self.prior_history = list(counters.get('prior_history', []))
        elif cfg.get('init_weights'):
            self.prior_history = load_initial_weights(self.model, cfg['init_weights'], cfg['tasks'])
            log.info('starting from %s (%d earlier iterations)', cfg['init_weights'], totals(self.prior_history)[0])
        self.metrics = {}

    # -- one step ---------------------------------------------------------------------------------
    def _set_lr(self):
        r = self.recipe
        lr = poly_lr(r['lr'], self.iteration, int(r['iters']), r['poly_power'])
        dlr = poly_lr(r['disc_lr'], self.iteration, int(r['iters']), r['poly_power'])
        for g in self.opt.param_groups:
            g['lr'] = lr
        for g in self.disc_opt.param_groups:
            g['lr'] = dlr
        return lr, dlr

    def _autocast(self):
        return torch.autocast('cuda', dtype=torch.float16, enabled=self.amp)

    def seg_losses(self, batch, disc=None):
        """(total, parts) of the segmenter's loss on a batch, plus the main logits per task."""
        r = self.recipe
        image = batch['image'].to(self.device, non_blocking=True)
        targets = {k: batch[k].to(self.device, non_blocking=True) for k in ('parts', 'type', 'binary')}
        with self._autocast():
            pred = self.net(image)
        main = self.model.split(pred['out'])
        bw = float(r.get('binary_weight', 1.0))
        cw = r.get('class_weights')
        terms = {'main': losses.segmentation_loss(main, targets, bw, cw)}
        total = terms['main']
        if r['aux']:
            terms['aux'] = losses.segmentation_loss(self.model.split(pred['aux']), targets, bw, cw)
            total = total + r['aux_weight'] * terms['aux']
        if r['adversarial']:
            disc = self.disc if disc is None else disc  # frozen here: the plain module, no DDP sync
            with self._autocast():
                d_fake = disc(losses.prediction_probs(main))
            terms['adv'] = losses.adversarial_loss(d_fake)
            total = total + r['adv_weight'] * terms['adv']
        return total, terms, main, targets

    def disc_loss(self, main, targets):
        real = losses.ground_truth_probs(main, targets)
        fake = losses.prediction_probs(main).detach()
        with self._autocast():  # one forward for both halves: DDP expects one forward per backward
            d_real, d_fake = self.disc_net(torch.cat([real, fake])).chunk(2)
        return losses.discriminator_loss(d_real, d_fake)

    def step(self, batch):
        lr, dlr = self._set_lr()
        self.model.train()
        self.disc.train()
        adversarial = self.recipe['adversarial']
        self.disc.requires_grad_(False)  # the segmenter's step must not move the discriminator
        total, terms, main, targets = self.seg_losses(batch)
        self._check_finite(total)  # before any step: the weights stay as they were
        self.opt.zero_grad(set_to_none=True)
        self.scalers['seg'].scale(total).backward()
        self.scalers['seg'].step(self.opt)
        self.scalers['seg'].update()
        self.disc.requires_grad_(True)
        row = {'lr': lr, 'disc_lr': dlr, 'loss': float(total.detach())}
        row.update({k: float(v.detach()) for k, v in terms.items()})
        if adversarial:
            d_loss = self.disc_loss({k: v.detach() for k, v in main.items()}, targets)
            self._check_finite(d_loss, 'discriminator loss')
            self.disc_opt.zero_grad(set_to_none=True)
            self.scalers['disc'].scale(d_loss).backward()
            self.scalers['disc'].step(self.disc_opt)
            self.scalers['disc'].update()
            row['disc'] = float(d_loss.detach())
        self.iteration += 1
        return row

    def _check_finite(self, loss, what='loss'):
        value = float(loss.detach())
        if not np.isfinite(value):
            raise MffsegError(f'{self.out}: {what} became {value} at iteration {self.iteration} '
                              f'(lower recipe.lr, or check the data)')

    # -- the run ----------------------------------------------------------------------------------
    def _loader(self, samples, epoch, skip_batches):
        bs = int(self.recipe['batch_size'])
        sampler = torch.utils.data.DistributedSampler(samples, num_replicas=self.dist.world, rank=self.dist.rank,
                                                      shuffle=True, seed=int(self.cfg['seed']),
                                                      drop_last=len(samples) >= self.dist.world)
        sampler.set_epoch(epoch)
        samples.set_epoch(epoch)
        order = list(sampler)[skip_batches * bs:]
        workers = int(self.cfg['workers'])
        return torch.utils.data.DataLoader(samples, batch_size=bs, sampler=order, num_workers=workers,
                                           drop_last=len(order) >= bs, pin_memory=self.device.type == 'cuda',
                                           persistent_workers=False)

    def _batches_per_epoch(self, samples):
        per_rank = len(samples) // self.dist.world if len(samples) >= self.dist.world else len(samples)
        bs = int(self.recipe['batch_size'])
        return max(1, per_rank // bs) if per_rank >= bs else 1

    def run(self, until=None):
        """Trains to recipe.iters and writes the weights; with `until`, stops at that iteration with a
        checkpoint only (a time-sliced run; continue it with resume=True). Returns the weights path, or
        None after a stop at `until`. The process group (torchrun) is closed however the run ends."""
        try:
            return self._run(until)
        finally:
            self.dist.close()

    def _run(self, until):
        cfg, r = self.cfg, self.recipe
        data_root = cfg['data']['root']
        train_specs = resolve_specs(cfg['data']['train'], data_root)
        val_specs = resolve_specs(cfg['data'].get('val'), data_root)
        samples = training_samples(cfg, train_specs)
        # built now, so that a bad validation spec fails before training, not after it
        self._val_samples = evaluation_samples(cfg, val_specs) if val_specs else None
        total = int(r['iters'])
        stop = total if until is None else min(int(until), total)
        if self.dist.main:
            self._write_run_info(train_specs, val_specs, len(samples))
        csv_log = CsvLog(self.out / 'train_log.csv') if self.dist.main else None
        if csv_log is not None and self.iteration:
            csv_log.truncate_after(self.iteration)
        bpe = self._batches_per_epoch(samples)
        bar = tqdm(total=total, initial=self.iteration, desc=f'train {cfg["name"]}', unit='it',
                   disable=not self.dist.main, dynamic_ncols=True)
        last = {}
        tick = time.perf_counter()
        started, start_iteration = tick, self.iteration
        stop_file = self.out / STOP_FILE
        stop_file.unlink(missing_ok=True)
        while self.iteration < stop:
            epoch, offset = divmod(self.iteration, bpe)
            for batch in self._loader(samples, epoch, offset):
                row = self.step(batch)
                if self.dist.enabled:  # log the mean over processes (every rank takes part)
                    row.update({k: self.dist.mean(v, self.device) for k, v in row.items() if k in LOSS_KEYS})
                now = time.perf_counter()
                row.update(iteration=self.iteration, epoch=epoch, sec_per_iter=now - tick)
                self.seconds += now - tick
                tick = now
                last = row
                bar.update(1)
                bar.set_postfix(loss=f'{row["loss"]:.3f}')
                if csv_log is not None and (self.iteration % int(cfg['log_every']) == 0
                                            or self.iteration == total or self.iteration == 1):
                    csv_log.write(row)
                    rate = (now - started) / max(1, self.iteration - start_iteration)
                    log.info('iteration %d/%d loss %.3f, %.2f s/it, %.2f h so far, ETA %.0f min', self.iteration,
                             stop, row['loss'], rate, self.seconds / 3600, (stop - self.iteration) * rate / 60)
                if int(cfg['val_every']) and val_specs and self.iteration % int(cfg['val_every']) == 0:
                    self.validate(val_specs)
                if self.iteration % int(cfg['checkpoint_every']) == 0 and self.iteration < total:
                    self.checkpoint()
                if stop_file.exists():
                    log.info('%s found: stopping at iteration %d', stop_file, self.iteration)
                    stop = total = self.iteration
                if self.iteration >= stop:
                    break
        bar.close()
        if self.iteration < total:
            self.checkpoint()
            return None
        if val_specs:
            self.validate(val_specs)
        self.metrics['final_loss'] = last.get('loss')
        self.checkpoint()
        path = self.out / WEIGHTS_FILE
        if self.dist.main:
            self._write_weights(path, train_specs, val_specs)  # curves were plotted by checkpoint()
            log.info('wrote %s (%d iterations)', path, self.iteration)
        return path

    def checkpoint(self):
        if not self.dist.main:
            return
        counters = {'iteration': self.iteration, 'seconds': self.seconds, 'prior_history': self.prior_history}
        save_checkpoint(self.out / 'checkpoint', model=self.model, discriminator=self.disc, optimizer=self.opt,
                        disc_optimizer=self.disc_opt, counters=counters, scalers=self.scalers)
        if (self.out / 'train_log.csv').is_file():
            plot_curves(self.out / 'train_log.csv', self.out / 'train_curves.png', title=self.cfg['name'])

    def validate(self, val_specs):
        samples = getattr(self, '_val_samples', None)
        if samples is None:
            samples = evaluation_samples(self.cfg, val_specs)
        loader = torch.utils.data.DataLoader(samples, batch_size=int(self.recipe['batch_size']),
                                             num_workers=int(self.cfg['workers']))
        result = validate(self.model, loader, self.device, self._autocast, progress=self.dist.main)
        self.metrics['validation'] = result
        self.metrics['validation_iteration'] = self.iteration
        if self.dist.main:
            log.info('validation at %d: mIoU %s', self.iteration,
                     {t: round(v['miou'], 4) for t, v in result.items()})
        return result

    def _write_run_info(self, train_specs, val_specs, n_train):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / 'config.yaml').write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        info = {'git_revision': git_revision(), 'train_data': train_specs, 'val_data': val_specs,
                'train_samples': n_train, 'world_size': self.dist.world, 'device': str(self.device),
                'amp': self.amp, 'torch': torch.__version__}
        (self.out / 'run.json').write_text(json.dumps(info, indent=1))

    def _write_weights(self, path, train_specs, val_specs):
        cfg = self.cfg
        recipe = dict(cfg['recipe'], seed=cfg['seed'], augment=cfg['augment'], world_size=self.dist.world,
                      config_name=cfg['name'], crop_size=cfg.get('crop_size'), init_weights=cfg.get('init_weights'))
        norm = cfg['normalization']
        preprocessing = Preprocessing(mean=norm['mean'], std=norm['std'], train_size=cfg['train_size'],
                                      input_scale=cfg['input_scale'])
        history = self.prior_history + [{
            # hours to 6 decimals (4 ms): a short run never records 0 h
            'iterations': self.iteration, 'hours': round(self.seconds / 3600, 6), 'config_name': cfg['name'],
            'train_size': [int(v) for v in cfg['train_size']], 'device': str(self.device),
            'world_size': self.dist.world, 'git_revision': git_revision()}]
        total_iters, total_hours, unknown = totals(history)
        encoder = cfg.get('encoder_weights')
        provenance = Provenance(git_revision=git_revision(), iterations=total_iters, hours=round(total_hours, 6),
                                train_data=train_specs, val_data=val_specs,
                                encoder_init=Path(encoder).name if encoder else 'random')
        # The run-by-run record and the training frame scales travel as extra keys of the metadata.
        extra = {'training_history': history, 'total_iterations': total_iters,
                 'total_hours': round(total_hours, 6), 'runs_without_hours': unknown,
                 'train_scales': [float(v) for v in cfg['augment'].get('scale', (1.0, 1.0))]}
        meta = WeightsMeta.for_model(self.model, preprocessing=preprocessing, recipe=recipe, metrics=self.metrics,
                                     provenance=provenance, extra=extra)
        save_weights(path, self.model, meta)
