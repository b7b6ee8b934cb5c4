"""Parsing of HxW sizes ('512x640'), shared by every command and data spec that takes one."""
import re

from mffseg_ros.errors import MffsegError

_SIZE = re.compile(r'\s*(\d+)\s*[xX]\s*(\d+)\s*')


def parse_size(text, *, what='size', multiple=1, minimum=1, maximum=None, error=MffsegError):
    """'512x640' -> (512, 640). Raises `error` naming `what` and the rule that was broken."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise error(f'{what} {text!r}: expected HxW (height x width), e.g. 512x640')
    height, width = int(match.group(1)), int(match.group(2))
    if min(height, width) < minimum or (maximum and max(height, width) > maximum):
        limit = f'{minimum} to {maximum}' if maximum else f'at least {minimum}'
        raise error(f'{what} {text!r}: height and width must be {limit}')
    if height % multiple or width % multiple:
        raise error(f'{what} {text!r}: height and width must be positive multiples of {multiple}')
    return height, width
