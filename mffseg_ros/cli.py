"""The `mffseg` command. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their command runs."""
import argparse
import importlib
import logging
import sys

from mffseg_ros.errors import MffsegError

COMMANDS = {
    'segment': ('mffseg_ros.tools.segment_image', 'segment images and write overlay PNGs'),
    'train': ('mffseg_ros.training.cli', 'train MFF from a YAML config'),
    'evaluate': ('mffseg_ros.evaluation.cli', 'evaluate weights on a data set (Dice, IoU, Hausdorff...)'),
    'bag': ('mffseg_ros.tools.bag_cli', 'write rosbag2 bags from EndoVis 2017 or synthetic scenes'),
    'play': ('mffseg_ros.ros.play', 'replay a rosbag2 bag over DDS through rclpy'),
    'bench': ('mffseg_ros.tools.bench', 'benchmark the model and the ROS pipeline'),
    'export': ('mffseg_ros.tools.export', 'export weights to ONNX'),
    'average': ('mffseg_ros.training.average', 'average fine-tuned weights with the weights they started from'),
    'demo': ('mffseg_ros.tools.demo', 'end-to-end demo: synthetic stereo bag -> node -> tips and overlays'),
}


class _LazyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(argv):
    parser = argparse.ArgumentParser(prog='mffseg', description=__doc__.split('.')[0] + '.',
                                     formatter_class=_LazyHelpFormatter)
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging and tracebacks')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    wanted = next((a for a in argv if not a.startswith('-')), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module of the command being run
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='[%(levelname)s] %(name)s: %(message)s')
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except MffsegError as e:
        if args.verbose:
            raise
        print(f'mffseg {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'mffseg {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
