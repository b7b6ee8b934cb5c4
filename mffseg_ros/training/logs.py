"""Per-run CSV log of the training curves and their PNG plot; the run's git revision."""
import csv
import subprocess
from pathlib import Path

LOG_COLUMNS = ('iteration', 'epoch', 'lr', 'disc_lr', 'loss', 'main', 'aux', 'adv', 'disc', 'sec_per_iter')


class CsvLog:
    """Appends rows to `path` (header written once; a resumed run keeps appending)."""

    def __init__(self, path, columns=LOG_COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            with self.path.open('w', newline='') as f:
                csv.writer(f).writerow(self.columns)

    def truncate_after(self, iteration):
        """Drops rows logged after `iteration` (a resumed run re-does them)."""
        rows = read_csv(self.path)
        with self.path.open('w', newline='') as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in rows:
                if int(float(r['iteration'])) <= iteration:
                    w.writerow([r.get(c, '') for c in self.columns])

    def write(self, row):
        with self.path.open('a', newline='') as f:
            csv.writer(f).writerow([_fmt(row.get(c, '')) for c in self.columns])


def _fmt(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def read_csv(path):
    with Path(path).open(newline='') as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path, png_path, title=''):
    """Loss terms and learning rate against iteration, one PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    its = [int(float(r['iteration'])) for r in rows]
    for key in ('loss', 'main', 'aux', 'adv', 'disc'):
        pts = [(i, float(r[key])) for i, r in zip(its, rows) if r.get(key) not in ('', None)]
        if pts:
            ax_loss.plot(*zip(*pts), label=key, marker='.' if len(pts) < 30 else None)
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('loss')
    ax_loss.set_yscale('log')
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key in ('lr', 'disc_lr'):
        pts = [(i, float(r[key])) for i, r in zip(its, rows) if r.get(key) not in ('', None)]
        if pts:
            ax_lr.plot(*zip(*pts), label=key)
    ax_lr.set_xlabel('iteration')
    ax_lr.set_ylabel('learning rate (poly 0.9)')
    ax_lr.legend()
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


def git_revision():
    """`<commit>[-dirty]` of the source tree this package runs from, or 'unknown'."""
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return rev + ('-dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
