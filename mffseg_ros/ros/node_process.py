"""The segment node in its own process, as `ros2 run` / `ros2 launch` would start it: for the demo,
the ROS benchmark and tests that need a separate process (no rclpy import here)."""
import os
import shutil
import subprocess
import sys
import tempfile

from mffseg_ros.errors import MffsegError


def _ros_value(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


class NodeProcess:
    """`parameters`: {name: value} given as `-p name:=value`; `params_file`: a YAML preset;
    `namespace`: `__ns` remap. The node's log goes to `log_path` (a temporary file by default): an
    unread pipe would fill up and block the node mid-run."""

    def __init__(self, *, parameters=None, params_file=None, namespace=None, log_path=None):
        cmd = [sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--ros-args']
        if namespace:
            cmd += ['-r', f'__ns:={namespace}']
        if params_file:
            cmd += ['--params-file', str(params_file)]
        for name, value in (parameters or {}).items():
            cmd += ['-p', f'{name}:={_ros_value(value)}']
        self.log_path = log_path
        self._log = open(log_path, 'w+') if log_path else tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))

    def log_tail(self, lines=5):
        self._log.flush()
        self._log.seek(0)
        return ' | '.join(self._log.read().strip().splitlines()[-lines:])

    def failed(self):
        """None while the node runs, else why it ended (exit code and the end of its log)."""
        if self.proc.poll() is None:
            return None
        return f'segment node exited with code {self.proc.returncode}: {self.log_tail() or "no message"}'

    def check_alive(self):
        problem = self.failed()
        if problem:
            raise MffsegError(problem)

    def cpu_seconds(self):
        """User + system CPU time of the node process so far (from /proc; NaN where unreadable)."""
        try:
            with open(f'/proc/{self.proc.pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        except (OSError, IndexError, ValueError):
            return float('nan')

    def gpu_memory_mb(self):
        """The node's GPU memory in MiB per nvidia-smi, or None without a GPU."""
        if not shutil.which('nvidia-smi'):
            return None
        out = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'],
                             capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            pid, _, mem = line.partition(',')
            if pid.strip() == str(self.proc.pid):
                return float(mem)
        return None

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the node shuts down cleanly
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
