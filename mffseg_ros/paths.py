"""Where the package's shared files (models/, config/, launch/) live in each kind of install."""
import os
import sys
from pathlib import Path

PACKAGE = 'mffseg_ros'
DEFAULT_WEIGHTS_NAME = 'mffseg_default.safetensors'


def share_dirs():
    """Candidate share folders, most specific first: the source tree, colcon/ament, then pip."""
    here = Path(__file__).resolve().parent.parent
    if (here / 'package.xml').is_file():  # running from a checkout or an editable install
        yield here
    try:
        from ament_index_python.packages import get_package_share_directory
        yield Path(get_package_share_directory(PACKAGE))
    except Exception:  # not a ROS install, or the package is not on AMENT_PREFIX_PATH
        pass
    yield Path(sys.prefix) / 'share' / PACKAGE


def share_file(*parts):
    """First existing `share/<parts>`; the source-tree path if none exists (for the error message)."""
    candidates = [d.joinpath(*parts) for d in share_dirs()]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def default_weights_path():
    env = os.environ.get('MFFSEG_WEIGHTS')
    return Path(env) if env else share_file('models', DEFAULT_WEIGHTS_NAME)
